"""The model directory layout: the same file names as the hub repo nvidia/personaplex-7b-v1.

A model directory (a pulled hub snapshot, `--model DIR`, or the built-in tiny model) holds:

    config.json                                    moshi CheckpointInfo convention
    model.safetensors                              the LM
    tokenizer-e351c8d8-checkpoint125.safetensors   Mimi
    tokenizer_spm_32k_3.model                      the text tokenizer (sentencepiece)
    voices/NATF0.pt ...                            voice prompt states (from voices.tgz)
"""

REPO_ID = "nvidia/personaplex-7b-v1"
MODEL_PAGE_URL = f"https://huggingface.co/{REPO_ID}"

CONFIG_NAME = "config.json"
LM_NAME = "model.safetensors"
MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
TEXT_TOKENIZER_NAME = "tokenizer_spm_32k_3.model"
VOICES_ARCHIVE = "voices.tgz"
VOICES_DIR = "voices"

# The 18 voices shipped in voices.tgz: natural (NAT) and varied (VAR), female (F) and male (M).
VOICE_NAMES = (
    *(f"NATF{i}" for i in range(4)),
    *(f"NATM{i}" for i in range(4)),
    *(f"VARF{i}" for i in range(5)),
    *(f"VARM{i}" for i in range(5)),
)
VOICE_SUFFIXES = (".pt", ".wav")  # a prompt state, or audio to encode
