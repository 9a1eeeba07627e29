"""Hub failures as one line naming the fix: an ordered table of exception type and formatter.

`explain` uses the first row of HUB_ERRORS whose type the error is an instance of, so every
subclass comes before its bases (GatedRepoError before RepositoryNotFoundError before
HfHubHTTPError, and all of them before OSError, their common base). A formatter returns the
WeightsError to raise instead, or None when it cannot explain that error: the original then
propagates, traceback and all.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass

import requests
from huggingface_hub import constants, get_token
from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    FileMetadataError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import WeightsError
from ..layout import MODEL_PAGE_URL, REPO_ID
from .spec import DEFAULT_REVISION, RemoteFile, WeightsSpec
from .storage import download_root, partial_path, size_or_zero

_RETRY = "rerun `aimsvoice pull-weights`"


@dataclass(frozen=True)
class _Attempt:
    """What failed: the pull of `spec`, while fetching `remote` (None while listing the repo)."""

    spec: WeightsSpec
    remote: RemoteFile | None


Formatter = Callable[[Exception, _Attempt], WeightsError | None]


def explain(error: Exception, spec: WeightsSpec, remote: RemoteFile | None = None) -> WeightsError | None:
    """The WeightsError for a hub failure while pulling `spec` (fetching `remote`), or None when unexplained."""
    attempt = _Attempt(spec, remote)
    for kind, formatter in HUB_ERRORS:
        if isinstance(error, kind):
            return formatter(error, attempt)
    return None


def missing_files_error(spec: WeightsSpec, missing: list[str]) -> WeightsError:
    """The repo lacks files a PersonaPlex repo has: most likely --repo names something else."""
    return WeightsError(
        f"{spec.repo_id}@{spec.revision} has no {', '.join(missing)}: is --repo a PersonaPlex repo? "
        f"The default is {REPO_ID}"
    )


def _gated(error: Exception, at: _Attempt) -> WeightsError:
    page = MODEL_PAGE_URL if at.spec.repo_id == REPO_ID else f"{constants.ENDPOINT}/{at.spec.repo_id}"
    if at.spec.token is None and get_token() is None:
        return WeightsError(
            f"{at.spec.repo_id} is gated and no Hugging Face token was found: accept the NVIDIA Open Model License "
            f"at {page}, then run `hf auth login` (or set HF_TOKEN, or pass --token) and {_RETRY}"
        )
    return WeightsError(
        f"{at.spec.repo_id} is gated and this token's account has not accepted its license: accept the NVIDIA "
        f"Open Model License at {page} (logged in as the token's owner), then {_RETRY}"
    )


def _repo_not_found(error: Exception, at: _Attempt) -> WeightsError:
    return WeightsError(
        f"repo {at.spec.repo_id} not found on {constants.ENDPOINT} (or private to your token): check --repo "
        f"(default {REPO_ID})"
    )


def _revision_not_found(error: Exception, at: _Attempt) -> WeightsError:
    return WeightsError(
        f"revision {at.spec.revision!r} not found in {at.spec.repo_id}: pass a branch, tag or commit of that repo to "
        f"--revision (default {DEFAULT_REVISION})"
    )


def _unreachable(error: Exception, at: _Attempt) -> WeightsError:
    return WeightsError(
        f"cannot reach the Hugging Face hub at {constants.ENDPOINT}: check your connection, proxy or HF_ENDPOINT "
        f"and {_RETRY}; if the weights are already here, set HF_HUB_OFFLINE=1 to use them "
        f"(`aimsvoice pull-weights --check` verifies them)"
    )


def _entry_not_found(error: Exception, at: _Attempt) -> WeightsError:
    return missing_files_error(at.spec, [at.remote.name if at.remote is not None else "a needed file"])


def _disabled(error: Exception, at: _Attempt) -> WeightsError:
    return WeightsError(f"{at.spec.repo_id} is disabled on the hub: pull another repo with --repo")


def _http_status(error: Exception, at: _Attempt) -> WeightsError:
    repo = f"{at.spec.repo_id}@{at.spec.revision}"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 401:
        return WeightsError(
            f"the Hugging Face hub rejected the token (401 Unauthorized) for {repo}: make a read token at "
            f"https://huggingface.co/settings/tokens, then `hf auth login` (or HF_TOKEN, or --token) and {_RETRY}"
        )
    if status == 403:
        return WeightsError(
            f"the hub refused this token access to {repo} (403 Forbidden): use a token with read access to public "
            f"gated repos (https://huggingface.co/settings/tokens), then {_RETRY}"
        )
    if status is not None and status >= 500:
        return WeightsError(f"the hub answered {status} for {repo}: try again later; {_RETRY} resumes where it stopped")
    return WeightsError(f"the hub answered {status} for {repo} ({str(error).splitlines()[0]}): {_RETRY}")


def _no_metadata(error: Exception, at: _Attempt) -> WeightsError:
    return WeightsError(
        f"the hub at {constants.ENDPOINT} answered without file metadata ({error}): a proxy or firewall may be "
        f"in the way; check it and HF_ENDPOINT, then {_RETRY}"
    )


def _connection(error: Exception, at: _Attempt) -> WeightsError:
    # Refused before anything was listed: the hub is out of reach. Broken while fetching a file:
    # the download was cut and resumes.
    return _unreachable(error, at) if at.remote is None else _interrupted(at.spec, at.remote)


def _broken_transfer(error: Exception, at: _Attempt) -> WeightsError | None:
    return _interrupted(at.spec, at.remote) if at.remote is not None else None


def _os_error(error: Exception, at: _Attempt) -> WeightsError | None:
    # huggingface_hub raises a plain OSError when the bytes received do not add up to the size
    # announced: a connection that ended early.
    if at.remote is not None and "Consistency check failed" in str(error):
        return _interrupted(at.spec, at.remote)
    if getattr(error, "errno", None) == errno.ENOSPC:
        return WeightsError(
            f"the disk filled up while downloading {at.remote.name if at.remote else 'the weights'} into "
            f"{download_root(at.spec)}: free space, then {_RETRY} to resume"
        )
    return None


def _interrupted(spec: WeightsSpec, remote: RemoteFile) -> WeightsError:
    n_bytes_kept = size_or_zero(partial_path(spec, remote))
    return WeightsError(
        f"the download of {remote.name} was interrupted ({n_bytes_kept:,} of {remote.n_bytes:,} bytes kept): "
        f"{_RETRY} to resume from there"
    )


HUB_ERRORS: tuple[tuple[type[Exception], Formatter], ...] = (
    (GatedRepoError, _gated),
    (RepositoryNotFoundError, _repo_not_found),
    (RevisionNotFoundError, _revision_not_found),
    (LocalEntryNotFoundError, _unreachable),  # an EntryNotFoundError: no connection and not in the cache
    (OfflineModeIsEnabled, _unreachable),
    (EntryNotFoundError, _entry_not_found),
    (DisabledRepoError, _disabled),
    (HfHubHTTPError, _http_status),
    (FileMetadataError, _no_metadata),
    (requests.ConnectionError, _connection),
    (requests.Timeout, _connection),
    (requests.exceptions.ChunkedEncodingError, _broken_transfer),
    (OSError, _os_error),
)
