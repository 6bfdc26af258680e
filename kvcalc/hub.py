"""Hugging Face repo ids as MODEL arguments: ``org/name`` or ``org/name@revision``.

Only ``config.json`` is fetched (and ``model.safetensors.index.json`` when the repo has one, for the
checkpoint's exact weight bytes) -- never weights -- through ``huggingface_hub``, the field's own
client, into the standard Hugging Face cache. It honours ``HF_HOME``, ``HF_HUB_CACHE``,
``HF_HUB_OFFLINE``, ``HF_TOKEN`` and ``HF_ENDPOINT`` itself; with ``HF_HUB_OFFLINE=1`` an id already
in the cache resolves with no network. ``huggingface_hub`` is imported only when an id is given.

Every failure is one line naming the repo and what to do: not in the cache while offline, a gated
repo without access, an unknown repo or revision, a repo without a config, no network.
"""

from __future__ import annotations

import re
from pathlib import Path

from kvcalc.errors import SpecError, UnknownModelError
from kvcalc.files import read_text

REPO_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+)"
                     r"(?:@(?P<revision>[A-Za-z0-9_./-]+))?$")
"""``org/name`` with an optional ``@revision`` (a branch, tag or commit)."""
CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


def is_repo_id(model: str) -> bool:
    """Whether ``model`` is spelled as a repo id (whether it exists is the Hub's to say)."""
    m = REPO_ID.match(model)
    return m is not None and not m["repo"].endswith((".json", ".yaml", ".yml", ".gguf"))


def fetch(model: str) -> tuple[str, str | None]:
    """config.json's text and model.safetensors.index.json's (None: the repo has none, or it is
    not in the offline cache) for a repo id, from the cache or the Hub."""
    m = REPO_ID.match(model)
    repo, revision = m["repo"], m["revision"]
    texts = []
    for filename in (CONFIG, INDEX):
        try:
            local = _download(repo, revision, filename)
        except _Missing:  # only the index may be missing: a single-file checkpoint
            texts.append(None)
            continue
        texts.append(read_text(Path(local)))  # size-capped, as any file a user gives
    return texts[0], texts[1]


class _Missing(Exception):
    """The file is not in the repo, or not in the cache while offline."""


def _download(repo: str, revision: str | None, filename: str) -> str:
    """The local path of ``filename`` in ``repo``: hf_hub_download's, with its errors in one line."""
    import huggingface_hub
    from huggingface_hub import constants, errors
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    shown = f"{repo}@{revision}" if revision else repo
    get = f"hf download {repo} {filename}" + (f" --revision {revision}" if revision else "")
    # kvcalc's one line says what failed: none of the client's own log lines or progress bars
    hub_logging.set_verbosity_error()
    disable_progress_bars()
    try:
        return huggingface_hub.hf_hub_download(repo, filename, revision=revision)
    except errors.GatedRepoError:
        token = "your token has no access: accept its terms on its page" if huggingface_hub.get_token() else (
            "accept its terms on its page, then give a token (HF_TOKEN, or `hf auth login`)")
        raise SpecError(f"{shown}: a gated repo; {token}") from None
    except errors.RepositoryNotFoundError:
        raise UnknownModelError(f"{shown}: no such repo on {constants.ENDPOINT} (a private one needs a "
                                "token: HF_TOKEN), and no bundled model or file of that name") from None
    except errors.RevisionNotFoundError:
        raise UnknownModelError(f"{shown}: {repo} has no revision {revision!r}") from None
    except errors.LocalEntryNotFoundError as e:
        if filename != CONFIG:
            raise _Missing from None
        if constants.is_offline_mode():
            cache = constants.HF_HUB_CACHE
            raise SpecError(f"{shown}: {filename} is not in the Hugging Face cache ({cache}) and "
                            f"HF_HUB_OFFLINE is set; fetch it where the network is: {get}") from None
        cause = e.__cause__ or e.__context__
        why = f"{type(cause).__name__}: {cause}".splitlines()[0] if cause else "no network"
        raise SpecError(f"{shown}: cannot reach {constants.ENDPOINT} ({why}), and {filename} is not in the "
                        f"cache; fetch it where the network is ({get}) and set HF_HUB_OFFLINE=1") from None
    except errors.RemoteEntryNotFoundError:
        if filename != CONFIG:
            raise _Missing from None
        raise SpecError(f"{shown}: the repo has no {CONFIG} (not a transformers model?)") from None
    except errors.HfHubHTTPError as e:
        raise SpecError(f"{shown}: the Hub refused {filename}: {str(e).splitlines()[0]}") from None
    except (OSError, ValueError) as e:
        raise SpecError(f"{shown}: cannot fetch {filename}: {str(e).splitlines()[0]}") from None
