"""One in-process server (tiny model) shared by the server tests; its fault hook fails any
request whose prompt starts with FAULT_PREFIX, inside that request's processing."""
import pytest
from server_utils import serve_in_thread, tiny_async_engine

FAULT_PREFIX = "FAULT!"


class InjectedFault(RuntimeError):
    pass


@pytest.fixture(scope="session")
def tiny_server():
    from engine_utils import tiny_model
    tok = tiny_model()[2]
    marker = tok.encode(FAULT_PREFIX)

    def hook(out):
        if out.prompt_token_ids[:len(marker)] == marker:
            raise InjectedFault(f"injected fault in {out.request_id}")

    engine = tiny_async_engine(fault_hook=hook)
    srv = serve_in_thread(engine, max_body_bytes=64 * 1024)
    srv.engine = engine
    yield srv
    srv.stop()
