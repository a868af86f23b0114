"""OpenAI-compatible HTTP server (FastAPI + uvicorn) over one engine.

  python scripts/serve.py --config=configs/serve.py --config.port=8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \
    -d '{"model": "tiny", "prompt": "Hello", "max_tokens": 16}'
"""
import logging as std_logging
import sys

from absl import app, logging
from ml_collections import config_flags

try:
    from llmserve.server.launch import parse_flags_or_exit, serve
except ImportError as e:     # the server's packages are the optional `serve` extra
    sys.exit(f"scripts/serve.py needs the server extra ({e}): pip install -e '.[serve]'")

_CONFIG = config_flags.DEFINE_config_file("config", "configs/serve.py", "server config")


def main(argv):
    del argv
    logging.set_verbosity(logging.INFO)
    std_logging.getLogger("llmserve.server").setLevel(std_logging.INFO)
    serve(_CONFIG.value)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags_or_exit)
