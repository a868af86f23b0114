"""One in-process server (tiny model) shared by the server tests. Its fault hook fails a
request whose prompt starts with FAULT_PREFIX once it has FAULT_AFTER output tokens, inside
that request's processing (so a stream fails mid-way, after its headers)."""
import pytest
from server_utils import serve_in_thread, tiny_async_engine

FAULT_PREFIX = "FAULT!"
FAULT_AFTER = 3


class InjectedFault(RuntimeError):
    pass


@pytest.fixture(scope="session")
def tiny_server():
    from engine_utils import tiny_model
    tok = tiny_model()[2]
    marker = tok.encode(FAULT_PREFIX)

    def hook(out):
        if out.prompt_token_ids[:len(marker)] == marker and len(out.token_ids) >= FAULT_AFTER:
            raise InjectedFault(f"injected fault in {out.request_id}")

    engine = tiny_async_engine(fault_hook=hook)
    srv = serve_in_thread(engine, max_body_bytes=64 * 1024)
    srv.engine = engine
    yield srv
    srv.stop()
