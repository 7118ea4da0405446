"""Per-rule conda environments: every third-party module a rule's script reaches is in its env.

The rules are found by reading workflow/rules/*.smk (every `rule`/`checkpoint` with a `script:`),
the imports by parsing the script and, transitively, every saestab module it reaches (package
`__init__`s included, imports inside functions included: a lazy import still runs in some
configuration). Imports guarded by `try: ... except ImportError` and those under
`if TYPE_CHECKING:` are optional and not required. Import names are mapped to distributions with
importlib.metadata.packages_distributions() of the project venv; conda names that differ from
pip names go through CONDA_TO_PIP. Pins in envs/*.yaml must agree with requirements/lock.txt.

Conda itself cannot run on the machines this is developed on, so this test is what keeps the
envs honest; `snakemake --sdm conda` on a machine with conda builds them.

    python tests/test_envs.py     # prints what each env lacks, per rule (a report, exit 1 if any)
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "workflow" / "rules"
LIBRARY = REPO / "workflow"  # holds the saestab package
LOCK = REPO / "requirements" / "lock.txt"
PACKAGE = "saestab"

# conda-forge names whose pip distribution is named differently
CONDA_TO_PIP = {
    "pytorch": "torch",
    "matplotlib-base": "matplotlib",
    "python-gguf": "gguf",
}
# a distribution a module needs without importing it: (imported module, text in the importing
# file that shows the need) -> distribution. pandas reads and writes Parquet through pyarrow;
# transformers loads GGUF files through gguf and SentencePiece tokenizers through sentencepiece.
IMPLICIT = {
    ("pandas", "parquet"): "pyarrow",
    ("transformers", "gguf"): "gguf",
    ("transformers", "AutoTokenizer"): "tokenizers",
}
# entries an env may carry that are not Python imports: the interpreter and pip itself
TOOLCHAIN = {"python", "pip"}


def normalize(name: str) -> str:
    """PEP 503 form of a distribution name (PyYAML -> pyyaml)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# rules


@dataclass
class Rule:
    name: str
    smk: Path
    script: Path | None
    conda: Path | None


_RULE = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.M)
_DIRECTIVE = r"^\s+{}:\s*(?:\n\s+)?(['\"])(.+?)\1"


def find_rules(rule_dir: Path = RULES) -> list[Rule]:
    """Every rule of every .smk file under ``rule_dir``, with its script and conda env paths."""
    rules = []
    for smk in sorted(rule_dir.glob("*.smk")):
        text = smk.read_text()
        starts = list(_RULE.finditer(text))
        ends = [m.start() for m in starts[1:]] + [len(text)]
        for m, end in zip(starts, ends[: len(starts)], strict=True):
            body = text[m.end(): end]

            def directive(name: str, body: str = body, smk: Path = smk) -> Path | None:
                d = re.search(_DIRECTIVE.format(name), body, re.M)
                return (smk.parent / d.group(2)).resolve() if d else None

            rules.append(Rule(m.group(1), smk, directive("script"), directive("conda")))
    return rules


# ---------------------------------------------------------------------------------------------
# imports


@dataclass
class Imports:
    """Top-level third-party module names -> the file that imports them (first seen)."""

    required: dict[str, Path] = field(default_factory=dict)
    optional: dict[str, Path] = field(default_factory=dict)  # guarded by except ImportError
    deferred: dict[str, Path] = field(default_factory=dict)  # in functions the script never calls
    implicit: dict[str, Path] = field(default_factory=dict)  # distribution -> file
    via: dict[Path, Path] = field(default_factory=dict)  # library file -> file that imports it

    def chain(self, path: Path) -> list[Path]:
        """The script, the library modules it imports on the way, and ``path``."""
        out = [path]
        while out[-1] in self.via:
            out.append(self.via[out[-1]])
        return out[::-1]


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
        p = parents.get(p)
    return False


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `try: ... except ImportError` or `if TYPE_CHECKING:`?"""
    child, p = node, parents.get(node)
    while p is not None:
        if isinstance(p, ast.Try) and child in p.body:
            for h in p.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
                       for n in names):
                    return True
        if isinstance(p, ast.If) and "TYPE_CHECKING" in ast.unparse(p.test):
            return True
        child, p = p, parents.get(p)
    return False


def _module_file(dotted: str, root: Path) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _package_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts)
    return ".".join(parts[:-1])


def collect_imports(script: Path, library: Path = LIBRARY, package: str = PACKAGE) -> Imports:
    """Third-party imports of ``script`` and of every ``package`` module it reaches.

    Module-level imports of every reached module are required. An import inside a function is
    required where the script itself has it or in a module the script imports by name (the
    script calls into those); in a module reached only through other library modules it is
    `deferred` (e.g. models.py loads transformers only when a model is loaded, which a figure
    rule that reaches models.py for a type never does).
    """
    out = Imports()
    todo, seen = [script], set()
    direct: set[Path] = set()
    stdlib = set(sys.stdlib_module_names)
    while todo:
        path = todo.pop(0)
        if path in seen:
            continue
        seen.add(path)
        src = path.read_text()
        tree = ast.parse(src, filename=str(path))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        in_lib = library in path.parents
        here = _package_of(path, library) if in_lib else ""
        mine: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
                submodules: list[str] = []
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:  # relative: only meaningful inside the library
                    if not in_lib:
                        continue
                    parts = here.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    mod = ".".join(p for p in [*parts, mod] if p)
                modules = [mod]
                submodules = [f"{mod}.{a.name}" for a in node.names]  # where they are modules
            else:
                continue
            for name in modules:
                top = name.split(".")[0]
                if top == package:
                    # the module itself and its parent packages' __init__s run on import
                    parts = name.split(".")
                    found = [f for i in range(1, len(parts) + 1)
                             if (f := _module_file(".".join(parts[:i]), library))]
                    found += [f for sub in submodules if (f := _module_file(sub, library))]
                    for f in found:
                        out.via.setdefault(f, path)
                        if path == script:
                            direct.add(f)
                    todo += found
                elif top and top not in stdlib:
                    if _guarded(node, parents):
                        target = out.optional
                    elif _in_function(node, parents) and path != script and path not in direct:
                        target = out.deferred
                    else:
                        target = out.required
                        mine.add(top)
                    target.setdefault(top, path)
        for (module, needle), dist in IMPLICIT.items():
            if module in mine and needle in src:
                out.implicit.setdefault(dist, path)
    for module in out.required:
        out.deferred.pop(module, None)
    return out


def distributions(module: str, mapping: dict[str, list[str]] | None = None) -> set[str]:
    """Distributions (normalized) that provide top-level import ``module`` in this venv."""
    mapping = packages_distributions() if mapping is None else mapping
    return {normalize(d) for d in mapping.get(module, [])}


# ---------------------------------------------------------------------------------------------
# envs and pins


@dataclass
class Pin:
    name: str  # normalized pip name
    op: str
    version: str
    source: str  # "conda" or "pip"
    raw: str


_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(==|=|>=|<=|~=|!=|<|>)?\s*([^\s;#]*)")


def env_pins(env_file: Path) -> dict[str, Pin]:
    """Packages of a conda env file (conda and pip sections), by normalized pip name."""
    spec = yaml.safe_load(env_file.read_text()) or {}
    pins: dict[str, Pin] = {}

    def add(raw: str, source: str) -> None:
        m = _SPEC.match(raw)
        if not m:
            raise ValueError(f"{env_file}: cannot read dependency {raw!r}")
        name = m.group(1).split("::")[-1]
        if source == "conda":
            name = CONDA_TO_PIP.get(name.lower(), name)
        pins[normalize(name)] = Pin(normalize(name), m.group(2) or "", m.group(3), source, raw)

    for dep in spec.get("dependencies", []):
        if isinstance(dep, str):
            add(dep, "conda")
        elif isinstance(dep, dict) and "pip" in dep:
            for p in dep["pip"]:
                add(p, "pip")
    return pins


def lock_versions(lock: Path = LOCK) -> dict[str, str]:
    out = {}
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[normalize(name)] = version.strip()
    return out


def pin_problems(env_file: Path, lock: dict[str, str]) -> list[str]:
    """Entries of ``env_file`` that are unpinned or disagree with the lock file / this Python."""
    problems = []
    for pin in env_pins(env_file).values():
        where = f"{env_file.name}: {pin.raw!r}"
        if pin.op not in ("=", "=="):
            problems.append(f"{where} is not pinned to a version")
            continue
        if pin.name == "python":
            have = ".".join(map(str, sys.version_info[:3]))
        elif pin.name == "pip":
            continue
        elif pin.name not in lock:
            problems.append(f"{where} is not in {LOCK.name} (the venv does not test it)")
            continue
        else:
            have = lock[pin.name]
        # conda's `=` matches a version prefix (python=3.11 takes 3.11.x); `==` is exact
        ok = have == pin.version or (pin.op == "=" and have.startswith(pin.version + "."))
        if not ok:
            problems.append(f"{where} disagrees with {have} "
                            f"({'the venv' if pin.name == 'python' else LOCK.name})")
    return problems


# ---------------------------------------------------------------------------------------------
# the check


def coverage_problems(rules: list[Rule], library: Path = LIBRARY, package: str = PACKAGE,
                      mapping: dict[str, list[str]] | None = None) -> list[str]:
    """One line per (rule, missing distribution), naming the import and the file it is in."""
    mapping = packages_distributions() if mapping is None else mapping
    problems = []
    for rule in rules:
        if rule.script is None:
            continue
        if rule.conda is None:
            problems.append(f"rule {rule.name} ({rule.smk.name}) has a script but no conda: env")
            continue
        if not rule.conda.is_file():
            problems.append(f"rule {rule.name}: conda env {rule.conda} does not exist")
            continue
        if not rule.script.is_file():
            problems.append(f"rule {rule.name}: script {rule.script} does not exist")
            continue
        have = set(env_pins(rule.conda))
        imports = collect_imports(rule.script, library, package)
        needs = {}

        def via(path: Path, imports: Imports = imports) -> str:
            return " -> ".join(_rel(p) for p in imports.chain(path))

        for module, path in imports.required.items():
            dists = distributions(module, mapping)
            if not dists:
                problems.append(f"rule {rule.name}: `import {module}` ({via(path)}) is not "
                                "installed in the venv (add it to pyproject/lock.txt)")
            elif not dists & have:
                needs[sorted(dists)[0]] = f"import {module}: {via(path)}"
        for dist, path in imports.implicit.items():
            if normalize(dist) not in have:
                needs[normalize(dist)] = f"needed by another package: {via(path)}"
        for dist, why in sorted(needs.items()):
            problems.append(f"rule {rule.name}: {_rel(rule.conda)} lacks {dist} ({why})")
    return problems


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# tests on the project


def test_every_script_rule_is_found_with_an_env():
    rules = find_rules()
    scripted = [r for r in rules if r.script is not None]
    names = {r.name for r in scripted}
    # the stages that exist from the start; later stages add to this
    assert {"extract_corpus", "tokenize", "cache_activations", "train_saes",
            "stability_census", "table1"} <= names
    for r in scripted:
        assert r.conda is not None, f"rule {r.name} has no conda: env"
        assert r.conda.parent == REPO / "envs", r
    by_name = {r.name: r for r in rules}
    assert by_name["train_saes"].conda == REPO / "envs" / "train.yaml"
    assert by_name["train_saes"].script == REPO / "workflow" / "scripts" / "train_saes.py"


def test_every_env_is_used_by_a_rule():
    used = {r.conda for r in find_rules() if r.conda is not None}
    assert set((REPO / "envs").glob("*.yaml")) <= used


def test_every_rule_env_provides_what_its_script_imports():
    problems = coverage_problems(find_rules())
    assert not problems, "conda envs lack modules their rules import:\n  " + "\n  ".join(problems)


def all_pin_problems() -> list[str]:
    lock = lock_versions()
    return [p for env in sorted((REPO / "envs").glob("*.yaml")) for p in pin_problems(env, lock)]


def test_env_pins_agree_with_the_lock_file():
    problems = all_pin_problems()
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# tests of the checker on planted files


def _plant(tmp_path: Path, script: str, env: list, lib: dict[str, str] | None = None) -> Path:
    """A rules dir with one rule, its script, its env and a small library package."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "envs").mkdir()
    (tmp_path / "rules" / "x.smk").write_text(
        'rule x:\n    output:\n        "x.txt",\n    conda:\n        "../envs/x.yaml"\n'
        '    script:\n        "../scripts/x.py"\n\n\nrule y:\n    output:\n        "y.txt",\n'
        '    shell:\n        "touch {output}"\n')
    (tmp_path / "scripts" / "x.py").write_text(script)
    (tmp_path / "envs" / "x.yaml").write_text(yaml.safe_dump({"dependencies": env}))
    for rel, text in (lib or {}).items():
        f = tmp_path / "lib" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return tmp_path


MAPPING = {"numpy": ["numpy"], "yaml": ["PyYAML"], "scipy": ["scipy"], "torch": ["torch"],
           "pandas": ["pandas"], "sklearn": ["scikit-learn"]}


def test_checker_reports_an_import_added_without_its_env_entry(tmp_path):
    root = _plant(tmp_path, "import numpy as np\nimport yaml\nfrom pathlib import Path\n",
                  ["python=3.11", "numpy=2.4.6", "pyyaml=6.0.3"])
    rules = find_rules(root / "rules")
    assert [(r.name, r.script is not None) for r in rules] == [("x", True), ("y", False)]
    assert coverage_problems(rules, root / "lib", "mylib", MAPPING) == []
    # the same script with one more import: the check now fails, naming module, file and env
    (root / "scripts" / "x.py").write_text("import numpy as np\nimport yaml\nimport scipy.stats\n")
    problems = coverage_problems(rules, root / "lib", "mylib", MAPPING)
    assert len(problems) == 1
    assert "x.yaml lacks scipy (import scipy: " in problems[0]
    assert problems[0].endswith("scripts/x.py)")


def test_checker_follows_the_library_transitively(tmp_path):
    lib = {"mylib/__init__.py": "",
           "mylib/a.py": "from . import b\nfrom .sub import c\n",
           "mylib/b.py": "def f():\n    import torch  # only when called\n    return torch\n",
           "mylib/sub/__init__.py": "import numpy\n",
           "mylib/sub/c.py": "import pandas as pd\nx = pd.read_parquet\n",
           "mylib/d.py": "def g():\n    import scipy  # the script calls into d\n",
           "mylib/unused.py": "import sklearn\n"}
    script = ("import sys\nfrom mylib import a, d\n"
              "try:\n    import sklearn\nexcept ImportError:\n    sklearn = None\n")
    root = _plant(tmp_path, script, ["numpy=2.4.6", "pandas=3.1.1"], lib)
    imports = collect_imports(root / "scripts" / "x.py", root / "lib", "mylib")
    assert set(imports.required) == {"numpy", "pandas", "scipy"}
    assert set(imports.deferred) == {"torch"}  # in b, which the script reaches only through a
    assert set(imports.optional) == {"sklearn"}  # guarded; mylib/unused.py is never reached
    assert set(imports.implicit) == {"pyarrow"}  # pandas + parquet in mylib/sub/c.py
    assert [p.name for p in imports.chain(root / "lib" / "mylib" / "sub" / "c.py")] == [
        "x.py", "a.py", "c.py"]
    problems = coverage_problems(find_rules(root / "rules"), root / "lib", "mylib", MAPPING)
    assert [p.split(" lacks ")[1].split(" ")[0] for p in problems] == ["pyarrow", "scipy"]
    assert "scripts/x.py -> " in problems[0] and problems[0].endswith("mylib/sub/c.py)")


def test_checker_reports_a_missing_env_and_unmapped_import(tmp_path):
    root = _plant(tmp_path, "import notinstalled\n", ["numpy=2.4.6"])
    rules = find_rules(root / "rules")
    problems = coverage_problems(rules, root / "lib", "mylib", MAPPING)
    assert problems and "`import notinstalled`" in problems[0] and "not installed" in problems[0]
    (root / "envs" / "x.yaml").unlink()
    assert "does not exist" in coverage_problems(rules, root / "lib", "mylib", MAPPING)[0]


def test_pin_check_reports_disagreement_and_unpinned(tmp_path):
    env = tmp_path / "e.yaml"
    env.write_text(yaml.safe_dump({"dependencies": [
        "python=3.11", "pip=24.2", "numpy=2.4.6", "pandas=3.0.0", "pytorch=2.13", "scipy",
        {"pip": ["safetensors==0.8.0", "mwparserfromhell==0.6"]}]}))
    lock = {"numpy": "2.4.6", "pandas": "3.1.1", "torch": "2.13.0", "scipy": "1.17.1",
            "safetensors": "0.8.0", "mwparserfromhell": "0.7.2"}
    problems = pin_problems(env, lock)
    assert len(problems) == 3, problems
    assert "'pandas=3.0.0' disagrees with 3.1.1" in problems[0]
    assert "'scipy' is not pinned" in problems[1]
    assert "'mwparserfromhell==0.6' disagrees with 0.7.2" in problems[2]
    assert "torch" in env_pins(env)  # conda's pytorch is pip's torch


@pytest.mark.parametrize("name,expected", [("PyYAML", "pyyaml"), ("transformer_lens",
                                           "transformer-lens"), ("a.b_c", "a-b-c")])
def test_normalize(name, expected):
    assert normalize(name) == expected


if __name__ == "__main__":
    found = coverage_problems(find_rules())
    found += all_pin_problems()
    print("\n".join(found) or "every rule's env covers its imports; pins agree with lock.txt")
    sys.exit(1 if found else 0)
