"""Every public dataset the project uses, by name: where it comes from, its license, size and
sha256, and where it lives once fetched.

Each file is a byte-identical copy of a file in a public GitHub repository at a pinned commit
(the raw URL below), so its sha256 never changes. A name is either one file or a group of
files (`castillo_llama31_8b`). Files live under the data directory, `$LLMSERVE_DATA`, else
`$XDG_CACHE_HOME/llmserve/data`, else `~/.cache/llmserve/data`, under their registry file name;
`scripts/fetch_data.py` puts them there. A directory that already holds the files (a shared
copy) works as the data directory as it is.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

FETCH_SCRIPT = "python scripts/fetch_data.py --config=configs/data.py"

_AZURE = ("https://raw.githubusercontent.com/Azure/AzurePublicDataset/"
          "b469a113cedca53ddc3bdea71a143dc4b7d8700c/data/")
_FASTCHAT = "https://raw.githubusercontent.com/lm-sys/FastChat/"
_CASTILLO = ("https://raw.githubusercontent.com/DanielFPerez/castillo_code/"
             "d13a0d7a45201d618ce94006c622fc22275def2a/data/")
_CASTILLO_LICENSE = ("CC BY 4.0 (CASTILLO card); prompts keep their source's terms, outputs "
                     "the Llama 3.1 Community License")


class DatasetMissing(ValueError):
    """A named dataset is not in the data directory: the message says how to fetch it."""


@dataclasses.dataclass(frozen=True)
class DataFile:
    name: str           # registry name; the file is NAME + ext under the data directory
    filename: str
    url: str            # upstream, pinned to a commit
    size: int           # bytes
    sha256: str
    license: str
    format: str         # the loader that reads it: azure_csv | castillo | alpaca | sharegpt
    about: str = ""


def _castillo(dataset: str, split: str, upstream: str, size: int, sha: str, about: str):
    name = f"castillo_llama31_8b_{dataset}_{split}"
    url = (f"{_CASTILLO}preprocessed/{split}/preproc_{upstream}_{split}_"
           "meta-llama--Llama-3.1-8B-Instruct.json")
    return DataFile(name, name + ".json", url, size, sha, _CASTILLO_LICENSE, "castillo",
                    f"CASTILLO: {about} prompts, 10 sampled Llama-3.1-8B-Instruct output "
                    f"lengths each ({split} split)")


_FILES = (
    DataFile("azure_conv_2023", "azure_conv_2023.csv", _AZURE + "AzureLLMInferenceTrace_conv.csv",
             719_188, "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
             "CC BY 4.0 (cite Patel et al., Splitwise, ISCA 2024)", "azure_csv",
             "Azure LLM inference trace 2023, conversation service: 19,366 requests, "
             "arrival time and prompt/output token counts"),
    DataFile("fastchat_dummy_conversation", "fastchat_dummy_conversation.json",
             _FASTCHAT + "0e6d3e4beaab66f4d3f93db72541a4abab8af28d/data/dummy_conversation.json",
             234_166, "534c5a1079f2eb61ff96633330ce87c4743f5b6d5b1691b44a65920473540470",
             "Apache-2.0 (repository)", "sharegpt",
             "FastChat's 500 hard-coded identity conversations: for formats, not for lengths"),
    DataFile("alpaca_data_cleaned_1000", "alpaca_data_cleaned_1000.json",
             _FASTCHAT + "04a1074d71ea66467d5fee6f1dde344efc012218/data/"
             "alpaca_data_cleaned_1000.json",
             814_436, "858a146c0a95e8893d2584010ef8958638aab7442d3f96e1dc07bef285806320",
             "research only: Alpaca data is CC BY-NC 4.0 (the file, from FastChat PR 2000, "
             "states none)", "alpaca",
             "the first 1,000 Alpaca-cleaned examples (text-davinci-003 answers)"),
    DataFile("dolly15k_validate", "dolly15k_validate.json",
             _CASTILLO + "raw_instruct/DollyDataset/complete_dataset/"
             "raw_DollyDataset_validate.json",
             2_630_481, "c46e5fe2bf129e46d4cdacb312c3b8079657f52a6f1cfae193aa01c197f454a1",
             "CC BY-SA 3.0 (databricks-dolly-15k)", "alpaca",
             "databricks-dolly-15k, CASTILLO's validation split: 3,002 human-written answers"),
    _castillo("alpaca", "validate", "Alpaca", 1_803_944,
              "74cf8c2e04fd1fd6984ab63b450f47d4ba8075527fce80ff2dfbaf3009b25c11", "400 Alpaca"),
    _castillo("dolly", "validate", "DollyDataset", 2_005_865,
              "73cad054ac70e282ea1bb30fd35fc2aec93ef57136ec075af9938eb60d335afc", "400 Dolly"),
    _castillo("sharegpt", "validate", "ShareGPT", 3_615_581,
              "a8c961223938330e32e10e25048f1ac546edd2d66556e8fbbca459fd90b5f4f7", "397 ShareGPT"),
    _castillo("apps", "validate", "Apps", 3_152_513,
              "e87309a8ea443f1362ef07edb3065e891ca96c9458c23af2b3d4b371782bc030", "400 APPS"),
    _castillo("bigcodebench", "validate", "BigCodeBench", 1_511_579,
              "4602bf764819c16fb9fbe1c6e64a05dbb190dc3b11863da52623440cba61181e",
              "227 BigCodeBench"),
    _castillo("ds1000", "validate", "DS1000", 1_109_160,
              "1e8fa35fbb9232a40afa6c0f832e9bb937dd0e264ebba30c421bb0d7447327ea", "200 DS-1000"),
    _castillo("mbpp", "validate", "Mbpp", 1_087_003,
              "29d51045b00f11014b03fc426e79244c8545b316d926fc07269ef676fb7a88ab", "195 MBPP"),
    _castillo("ds1000", "train", "DS1000", 4_008_101,
              "813a47ff8c3ae5559a87ed65b4f2d2026a5373cc9e89aeeadc970f557637a31b", "697 DS-1000"),
    _castillo("mbpp", "train", "Mbpp", 3_631_067,
              "222de1682d44d2a164b41433862f225079af51f15006f28ae97a8613b38ade47", "681 MBPP"),
)
DATASETS: dict[str, DataFile] = {f.name: f for f in _FILES}

_CHAT = tuple(f"castillo_llama31_8b_{d}_validate" for d in ("alpaca", "dolly", "sharegpt"))
_CODE = tuple(f"castillo_llama31_8b_{d}_validate" for d in ("apps", "bigcodebench", "ds1000",
                                                            "mbpp")) + \
    ("castillo_llama31_8b_ds1000_train", "castillo_llama31_8b_mbpp_train")
GROUPS: dict[str, tuple[str, ...]] = {
    "castillo_llama31_8b": _CHAT + _CODE,      # every Llama-3.1-8B-Instruct file
    "castillo_llama31_8b_chat": _CHAT,
    "castillo_llama31_8b_code": _CODE,
    "instruct_aux": ("dolly15k_validate", "alpaca_data_cleaned_1000"),
    "all": tuple(DATASETS),
}


def names_of(spec: str | Iterable[str]) -> list[str]:
    """'a,b' or ['a', 'b'] -> the names, stripped, empty ones dropped."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [s.strip() for s in items if s and s.strip()]


def resolve(spec: str | Iterable[str]) -> list[DataFile]:
    """Dataset and group names -> their files, in order, each once."""
    out: dict[str, DataFile] = {}
    for name in names_of(spec):
        if name in GROUPS:
            out.update((n, DATASETS[n]) for n in GROUPS[name])
        elif name in DATASETS:
            out[name] = DATASETS[name]
        else:
            raise ValueError(f"unknown dataset {name!r}: known datasets are "
                             f"{', '.join(DATASETS)}; groups {', '.join(GROUPS)}")
    return list(out.values())


def data_dir() -> str:
    """$LLMSERVE_DATA, else the user's cache directory (XDG_CACHE_HOME respected)."""
    env = os.environ.get("LLMSERVE_DATA")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "llmserve", "data")


def fetch_command(names: str | Iterable[str]) -> str:
    return f"{FETCH_SCRIPT} --config.names={','.join(names_of(names))}"


def dataset_path(name: str, directory: str | None = None) -> str:
    """The local path of dataset `name` (one file). Its size is checked, a cheap guard
    against a cut-off copy (the fetch verified the sha256); a missing or wrong-size file is a
    DatasetMissing error naming the dataset and the fetch command."""
    if name not in DATASETS:
        group = f" ({name!r} is a group: name one of its files)" if name in GROUPS else ""
        raise ValueError(f"unknown dataset {name!r}{group}: known datasets are "
                         f"{', '.join(DATASETS)}")
    f = DATASETS[name]
    d = directory or data_dir()
    path = os.path.join(d, f.filename)
    how = (f"fetch it with `{fetch_command(name)}` (downloads {f.size:,} bytes into {d}; "
           "set LLMSERVE_DATA to use another directory), or give the file's path explicitly")
    if not os.path.isfile(path):
        raise DatasetMissing(f"dataset {name!r} is not in the data directory ({path} does not "
                             f"exist): {how}")
    size = os.path.getsize(path)
    if size != f.size:
        raise DatasetMissing(f"dataset {name!r}: {path} is {size:,} bytes, expected "
                             f"{f.size:,} (a cut-off or different file): {how}")
    return path
