"""Readers for the deployment files (Dockerfile, .dockerignore, YAML) and the serving tests' fixtures.

Small on purpose: each reader understands just what deploy/ and the Dockerfile use, and fails loudly on
anything else rather than guess.
"""

from __future__ import annotations

import posixpath
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from service.settings import ServiceSettings
from tests.service.conftest import fake_model, processes, redis_server  # noqa: F401 - fixtures for tests/deploy

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
#: variables the deployment sets that are not service settings (read by the image's HEALTHCHECK,
#: the entry point, prometheus_client, and KEDA)
DEPLOY_ONLY_ENV = {"RSD_HEALTHCHECK_URL", "WEB_CONCURRENCY", "PROMETHEUS_MULTIPROC_DIR", "REDIS_ADDRESS"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def settings_env_names() -> set[str]:
    """Every environment variable ServiceSettings reads (RSD_<FIELD>, or the field's env aliases)."""
    names = set()
    for name, info in ServiceSettings.model_fields.items():
        choices = getattr(info.validation_alias, "choices", None)
        if choices:
            names.update(str(choice) for choice in choices if str(choice).isupper())
        else:
            names.add(f"RSD_{name.upper()}")
    return names


# --- Dockerfile ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [rest for name, rest in self.instructions if name == op]

    def last(self, op: str) -> str | None:
        found = self.all(op)
        return found[-1] if found else None


def _logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return lines


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Build stages in order; FROM images have the global ARG defaults substituted."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        op, _, rest = line.partition(" ")
        op, rest = op.upper(), rest.strip()
        if op == "FROM":
            words = [word for word in rest.split() if not word.startswith("--")]
            name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, _expand(words[0], global_args)))
        elif not stages:
            assert op == "ARG", f"{op} before the first FROM"
            key, _, default = rest.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append((op, rest))
    return stages


def stage_closure(stages: list[Stage], target: str) -> list[Stage]:
    """The target stage and every stage it is built FROM or copies --from, transitively."""
    by_name = {stage.name: stage for stage in stages if stage.name}
    seen: list[Stage] = []
    todo = [by_name[target]]
    while todo:
        stage = todo.pop()
        if stage in seen:
            continue
        seen.append(stage)
        if stage.base in by_name:
            todo.append(by_name[stage.base])
        for copy in stage.all("COPY"):
            source = re.search(r"--from=(\S+)", copy)
            if source and source.group(1) in by_name:
                todo.append(by_name[source.group(1)])
    return seen


# --- .dockerignore (moby's patternmatcher semantics: the last matching rule wins, a rule that matches a
# --- directory matches everything under it, `!` takes a path back) -------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_rules(path: Path) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = posixpath.normpath(line.lstrip("!").strip().lstrip("/"))
        rules.append((keep, _pattern_regex(pattern)))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out this repository-relative path."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for keep, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            result = not keep
    return result
