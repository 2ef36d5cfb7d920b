"""Documentation and structure that must not drift: every config key documented, every shipped config loads,
no import cycle between chattune's modules."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml

from chattune.config import CONFIGS, SCHEDULERS, TrainConfig, load_config

ROOT = Path(__file__).parent.parent
# configs/distributed/ holds accelerate's launcher configs, not chattune's (tested below)
SHIPPED = sorted(path for path in (ROOT / "configs").rglob("*.yaml") if path.parent.name != "distributed")
LAUNCHER_CONFIGS = sorted((ROOT / "configs" / "distributed").glob("*.yaml"))
# The config that documents each task's keys: example.yaml lists every chat key, classify.yaml every classify key.
EXAMPLE_CONFIG = {"chat": ROOT / "configs" / "example.yaml", "classify": ROOT / "configs" / "classify.yaml",
                  "summarize": ROOT / "configs" / "summarize.yaml", "align": ROOT / "configs" / "detox.yaml"}
# An align run takes the keys it shares with task: chat from its parent run; example.yaml documents those.
DOCUMENTED_WITH = {"align": "chat"}


def _keys(values: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict):
            keys |= _keys(value, f"{prefix}{key}.")
    return keys


def _fields(cls, prefix: str = "") -> set[str]:
    names = set()
    for spec in dataclasses.fields(cls):
        names.add(prefix + spec.name)
        default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
        if dataclasses.is_dataclass(default):
            names |= _fields(type(default), f"{prefix}{spec.name}.")
    return names


@pytest.mark.parametrize("task", sorted(CONFIGS))
def test_every_config_field_is_in_the_tasks_example_config(task):
    documented = set()
    for source in (task, DOCUMENTED_WITH.get(task, task)):
        documented |= _keys(yaml.safe_load(EXAMPLE_CONFIG[source].read_text(encoding="utf-8")))
    missing = sorted(_fields(CONFIGS[task]) - documented)
    assert not missing, f"{EXAMPLE_CONFIG[task].name} does not document: {', '.join(missing)}"


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_shipped_config_loads_and_starts_with_its_command(path):
    assert isinstance(load_config(path), TrainConfig)
    assert path.read_text().startswith("# "), "each config starts with the command that runs it"


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_every_distributed_config_is_an_accelerate_config_and_starts_with_its_command(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # accelerate's own reader: unknown keys fail here
    assert config.distributed_type in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    assert path.read_text().startswith(f"# chattune train configs/demo.yaml --output runs/"), path
    assert f"--accelerate-config configs/distributed/{path.name}" in path.read_text().splitlines()[0]


def test_scheduler_names_are_transformers_own():
    from transformers import SchedulerType

    assert set(SCHEDULERS) == {kind.value for kind in SchedulerType}


def _imports(path: Path, package: str, known: set[str]) -> set[str]:
    """chattune modules `path` imports, at module level or inside functions (a lazy import is still a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != package and not package.startswith(name + "."):
                found.add(name)
    return found


def _module_graph() -> dict[str, set[str]]:
    source = ROOT / "src"
    paths = {".".join(p.relative_to(source).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (source / "chattune").rglob("*.py")}
    return {name: _imports(path, name, set(paths)) for name, path in paths.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done, stack = set(), []

    def visit(node: str) -> list[str] | None:
        if node in stack:
            return stack[stack.index(node):] + [node]
        if node in done:
            return None
        stack.append(node)
        for target in sorted(graph[node]):
            if cycle := visit(target):
                return cycle
        stack.pop()
        done.add(node)
        return None

    return next((cycle for node in sorted(graph) if (cycle := visit(node))), None)


def test_no_import_cycle_between_modules():
    graph = _module_graph()
    assert len(graph) > 30 and "chattune.runs" in graph["chattune.train.sft"]  # the graph is really built
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_stages_do_not_import_each_other():
    """train never imports evaluate's run scoring or serve; serve never imports train (STYLE.md)."""
    graph = _module_graph()
    for module, targets in graph.items():
        if module.startswith("chattune.train"):
            assert not any(t.startswith(("chattune.serve", "chattune.evaluate.run", "chattune.pipeline"))
                           for t in targets), module
        if module.startswith("chattune.serve"):
            assert not any(t.startswith("chattune.train") for t in targets), module
