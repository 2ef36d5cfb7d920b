"""Publish an export folder to the Hugging Face Hub with huggingface_hub: create the repo, upload the folder as one
commit.

    push_folder(Path("runs/demo/export/hf"), "me/demo-chat", hub_token("me/demo-chat"), private=True, message="...")
    describe_push(Path("runs/demo/export/hf"), "me/demo-chat", private=True, message="...")  # --dry-run: no network

`--dry-run` only lists what would be sent; it never asks for a token either (huggingface_hub may refresh one over the
network), so it runs anywhere.
"""

from __future__ import annotations

from pathlib import Path

from chattune.errors import InputError


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise InputError(f"--push {repo_id}: not a Hub repo id ({str(error).splitlines()[0]}); use NAMESPACE/NAME, "
                         "e.g. my-team/support-bot") from None
    if "/" not in repo_id:
        raise InputError(f"--push {repo_id}: give the namespace too, e.g. your-user/{repo_id}")


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def describe_push(folder: Path, repo_id: str, *, private: bool, message: str) -> list[str]:
    """What a push would do, as lines to print; reads only the local folder."""
    check_repo_id(repo_id)
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    total = sum(path.stat().st_size for path in files)
    lines = [f"dry run: would push {len(files)} files ({_size(total)}) to https://huggingface.co/{repo_id} "
             f"({'private' if private else 'public'}; created if missing)"]
    lines += [f"  {_size(path.stat().st_size):>9}  {path.relative_to(folder).as_posix()}" for path in files]
    lines += [f"  commit message: {message}", "  nothing was sent; without --dry-run this needs a token "
              "(HF_TOKEN, or `hf auth login`)"]
    return lines


def hub_token(repo_id: str) -> str:
    """The token a push uploads with (HF_TOKEN, else the one `hf auth login` saved); asked for before any export."""
    from huggingface_hub import get_token

    token = get_token()
    if token is None:
        raise InputError(f"--push {repo_id}: no Hugging Face token; set HF_TOKEN or run `hf auth login` "
                         "(or add --dry-run to see what would be pushed)")
    return token


def push_folder(folder: Path, repo_id: str, token: str, *, private: bool, message: str) -> str:
    """Create the repo if needed and upload the folder as one commit; returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)
    # huggingface_hub raises its HTTP errors (401, 403, ...) as OSError, offline mode as ConnectionError, and lets its
    # HTTP client's transport errors through, whose classes changed between releases; all mean the push did not happen
    except Exception as error:  # noqa: BLE001
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"--push {repo_id}: the Hub could not be reached or refused the upload ({reason}); "
                         f"the export is kept in {folder}") from error
    return commit.commit_url
