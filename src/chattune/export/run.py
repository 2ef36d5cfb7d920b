"""`chattune export RUN --format hf|gguf|ollama`: write a run in a format other tools load, check that the export
says what the run says, describe it, and optionally publish it.

    result = export_run("runs/demo", "gguf", quant="q4_k_m")           # -> runs/demo/export/gguf-q4_k_m/
    print("\\n".join(result.lines))                                     # the check, the files, what to run next

Reads top to bottom: open the run -> load it as `chattune chat` does (LoRA merged into the base weights) -> write the
format into a temporary folder -> verify it against the run on 3 held-out prompts (export/verify.py) -> model card and
export.json -> rename the folder into place -> push it to the Hub, or describe the push (--dry-run). A failed check
leaves nothing behind and nothing is pushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from chattune.errors import InputError
from chattune.export import verify
from chattune.export.card import model_card
from chattune.export.gguf import ALL_QUANTS, export_gguf
from chattune.export.hf import write_hf_folder
from chattune.export.hub import check_repo_id, describe_push, hub_token, push_folder
from chattune.export.ollama import modelfile
from chattune.files import atomic_directory, atomic_write_json, atomic_write_text
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.generate.sampling import run_sampling
from chattune.runs import Run

FORMATS = ("hf", "gguf", "ollama")
DEFAULT_QUANT = "q8_0"  # as fast as q4_1 to decode on a CPU, and next to f16 the closest to the trained weights
OLLAMA_CONTEXT = 4096  # Modelfile num_ctx: chattune's llama.cpp context (generate/llamacpp.py), or the model's own
MANIFEST = "export.json"  # what was exported from which run, and the check's figures; marks a folder as an export


class VerificationFailed(Exception):
    """The exported model's replies differ from the run's beyond the format's tolerance (CLI: exit code 1)."""

    def __init__(self, message: str, lines: list[str]):
        super().__init__(message)
        self.lines = lines


@dataclass
class ExportResult:
    out: Path
    verification: dict  # Verification.to_dict: share of equal tokens, tolerance, replies
    lines: list[str]  # what the CLI prints


def export_run(name: str, fmt: str, *, out: str | Path | None = None, quant: str | None = None,
               push: str | None = None, private: bool = False, dry_run: bool = False,
               console: Console | None = None) -> ExportResult:
    console = console or Console(stderr=True)
    run = _checked_run(name, fmt, quant, push, private, dry_run)
    token = hub_token(push) if push and not dry_run else None  # no token: say so before minutes of export work
    quant = None if fmt == "hf" else quant or DEFAULT_QUANT
    out = Path(out) if out is not None else run.path / "export" / (fmt if fmt == "hf" else f"{fmt}-{quant}")
    _check_out(out)
    console.print(f"export: loading {run.path} as chattune chats with it (LoRA merged into {run.config.model})")
    reference = load_hf_backend(str(run.path))
    prompts = verify.held_out_prompts(run)
    title = push.split("/")[-1] if push else run.path.resolve().name
    with atomic_directory(out) as folder:
        console.print(f"export: writing {fmt}{' ' + quant if quant else ''}, then checking it on {len(prompts)} "
                      "held-out prompts")
        check = _write_and_verify(run, reference, fmt, quant, folder, prompts, title)
        lines = check.lines(reference.decode)
        if not check.passed:
            raise VerificationFailed(f"export verification failed ({check.summary()}); nothing was written to {out}",
                                     lines)
        summary = check.to_dict(reference.decode)
        files = sorted(path.name for path in folder.iterdir())
        atomic_write_text(folder / "README.md", model_card(run, fmt, summary, name=title, files=files,
                                                                  location=push or str(out)))
        atomic_write_json(folder / MANIFEST, {"run": str(run.path), "format": fmt, "quant": quant,
                                              "base_model": run.config.model, "files": files, "verification": summary})
    lines.append(f"wrote {out}/: {', '.join(sorted([*files, 'README.md', MANIFEST]))}")
    if push:
        message = f"chattune export of {run.path.resolve().name} ({fmt}{' ' + quant if quant else ''}): " \
                  f"{summary['share']:.1%} of tokens equal to the run's on {summary['prompts']} held-out prompts"
        lines += describe_push(out, push, private=private, message=message) if dry_run else \
            [f"pushed to {push_folder(out, push, token, private=private, message=message)}"]
    if fmt == "ollama":
        lines.append(f"next: cd {out} && ollama create {title} -f Modelfile && ollama run {title}")
    return ExportResult(out, summary, lines)


def _checked_run(name: str, fmt: str, quant: str | None, push: str | None, private: bool, dry_run: bool) -> Run:
    """The run, once every flag is known to be usable: nothing heavy has loaded yet."""
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if quant is not None and fmt == "hf":
        raise InputError("--quant applies to --format gguf and ollama; --format hf keeps the run's own weights")
    if quant is not None and quant not in ALL_QUANTS:
        raise InputError(f"--quant {quant}: choose one of {', '.join(ALL_QUANTS)}")
    if (dry_run or private) and not push:
        raise InputError(f"--{'dry-run' if dry_run else 'private'} goes with --push REPO_ID")
    if push:
        check_repo_id(push)
    run = Run.open(name)
    if run.task != "chat":
        raise InputError(f"{run.path}: export writes chat models; this is a {run.task} run")
    if not run.has_weights:
        raise InputError(f"{run.path}: run has no trained model yet (no adapter/ or model/ folder); did training "
                         "finish?")
    return run


def _check_out(out: Path) -> None:
    """`out` is replaced by the export: only an empty folder or an earlier export may be there."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST).is_file())):
        raise InputError(f"--out {out}: exists and is not an earlier export (no {MANIFEST}); give a new or empty "
                         "folder")


def _write_and_verify(run: Run, reference: HFBackend, fmt: str, quant: str | None, folder: Path,
                      prompts: list, title: str) -> verify.Verification:
    system = run.config.system_prompt
    if fmt == "hf":
        write_hf_folder(reference.model, reference.tokenizer, run_sampling(run.path), folder)
        return verify.verify(reference, verify.HFExport(folder, system), prompts, "transformers",
                             verify.TOLERANCE["hf"])
    gguf_file = export_gguf(reference.model, reference.tokenizer, folder / f"{title}-{quant}.gguf", quant)
    if fmt == "ollama":
        context = min(reference.context_length, OLLAMA_CONTEXT)
        atomic_write_text(folder / "Modelfile", modelfile(gguf_file.name, reference.tokenizer, reference.stop_ids,
                                                           system, context, run_sampling(run.path)))
    # room for the longest prompt and a reply (llama.cpp allocates the logits of every position up front)
    longest = max(len(reference.prompt_ids(context)) for context in prompts)
    exported = verify.GGUFExport(gguf_file, reference.tokenizer, system,
                                 min(reference.context_length, longest + verify.MAX_NEW_TOKENS + 64))
    try:
        return verify.verify(reference, exported, prompts, f"llama.cpp {quant}", verify.TOLERANCE[quant])
    finally:
        exported.close()
