"""Pull PersonaPlex from the Hugging Face hub, check it offline, and find it again.

What is pulled: what `talk` loads. config.json when the repo has one, the files it names
(moshi_name, mimi_name, tokenizer_name, mimi_config_name, lora_name; by default the LM, Mimi and
the text tokenizer of layout.py), and voices.tgz, whose voice prompts (NVIDIA's eighteen, or
whatever voices a fine-tune ships) are extracted into `voices/`. Nothing else of the repo
(README, dist.tgz).

Where the weights go:

* By default, the hub cache (HF_HOME / HF_HUB_CACHE respected). The model directory is the
  snapshot folder `<cache>/models--nvidia--personaplex-7b-v1/snapshots/<commit>/`: the hub's
  files (symlinks to its blobs), plus `voices/` extracted from voices.tgz and our manifest, both
  written inside it, as PersonaPlex's own server extracts voices.tgz beside the archive.
* With `--dir DIR`, DIR itself (the hub's local-dir mode; its bookkeeping lives in DIR/.cache).

The modules, one job each:

    download.py   `pull`: list the repo, check free space, fetch and resume, verify, record
    manifest.py   sha256 manifest, the offline `check`, the pull record, `find_pulled_model`
    voices.py     safe extraction of the voice prompts of voices.tgz
    errors.py     hub failures as one line naming the fix (an ordered table)
    progress.py   the per-file and total bars, or plain lines off a terminal
    storage.py    where the hub cache and --dir keep files; free disk space
    spec.py       what to pull (WeightsSpec) and the files the hub lists
"""

from .download import PullResult, pull
from .manifest import MANIFEST_NAME, CheckReport, FileCheck, check, find_pulled_model
from .spec import DEFAULT_REVISION, WeightsSpec
from .voices import extract_voices

__all__ = [
    "DEFAULT_REVISION",
    "MANIFEST_NAME",
    "CheckReport",
    "FileCheck",
    "PullResult",
    "WeightsSpec",
    "check",
    "extract_voices",
    "find_pulled_model",
    "pull",
]
