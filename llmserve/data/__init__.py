"""Public datasets by name: the registry (upstream URL, license, size, sha256) and the fetch
into the data directory ($LLMSERVE_DATA). Configs name datasets, never machine paths."""
from llmserve.data.registry import (DATASETS, GROUPS, DataFile, DatasetMissing, data_dir,
                                    dataset_path, fetch_command, resolve)

__all__ = ["DATASETS", "GROUPS", "DataFile", "DatasetMissing", "data_dir", "dataset_path",
           "fetch_command", "resolve"]
