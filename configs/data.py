"""Fetch public datasets by name into the data directory: scripts/fetch_data.py.

  python scripts/fetch_data.py --config=configs/data.py \
      --config.names=azure_conv_2023,castillo_llama31_8b
  python scripts/fetch_data.py --config=configs/data.py      # list the datasets and their state
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.names = ""                        # comma-separated dataset or group names (see the
                                        # listing); "" lists them; "all" fetches every one
    c.data_dir = ""                     # where files go ("" = $LLMSERVE_DATA, else
                                        # $XDG_CACHE_HOME/llmserve/data, else
                                        # ~/.cache/llmserve/data)
    c.mirror = ""                       # a local directory or base URL holding the same file
                                        # names, instead of the upstream URLs ("" = upstream)
    c.retries = 2                       # resumed attempts after a transfer breaks off
    c.timeout_s = 60.0                  # seconds without data before a connection is dropped
    return c
