"""Every config key a stage's code reads either defines its outputs (StageSpec.config_keys,
part of its fingerprint) or is listed with the reason it does not (StageSpec.ignored_keys),
so a new read can not silently leave reruns stale.

The reads are found statically, from each stage's `run`: every function and class of
pipeline/ and stages/ it reaches (calls, references such as Ray actors handed over by name,
module-level tables), and in them each attribute read on the config or on one of its
sections, following sections handed on as arguments, return values and attributes. A
recorder on a small run would miss what Ray workers read and the branches it does not take.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.core.config import Config
from stages.dag import STAGES

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages")
ROOT = "<config>"  # the kind of a whole Config
SECTIONS = {name: f.annotation for name, f in Config.model_fields.items()}
FIELDS = {name: set(cls.model_fields) for name, cls in SECTIONS.items()}
KIND_OF_CLASS = {cls.__name__: name for name, cls in SECTIONS.items()} | {"Config": ROOT}


# The ignored keys of stages whose files others edit now: to move into their StageSpecs.
@dataclass
class Unit:
    """A function, lambda, class or module-level value of the indexed code."""

    name: str
    module: str
    node: ast.AST
    cls: str | None = None  # a method's class; a class's own name
    params: list[str] = field(default_factory=list)  # in call order, without self
    returns: set[str] = field(default_factory=set)  # kinds the return annotation names
    methods: list[str] = field(default_factory=list)  # a class's
    bases: list[ast.expr] = field(default_factory=list)  # a class's


def annotation_kinds(node: ast.AST | None) -> set[str]:
    """The kinds (ROOT or section names) a type annotation names."""
    if node is None:
        return set()
    return {
        KIND_OF_CLASS[n.id]
        for n in ast.walk(node)
        if isinstance(n, ast.Name) and n.id in KIND_OF_CLASS
    }


def call_params(fn: ast.FunctionDef | ast.Lambda, method: bool) -> list[str]:
    names = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
    static = isinstance(fn, ast.FunctionDef) and any(
        isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list
    )
    return names[1:] if method and not static else names


class Index:
    """The functions, classes and module-level values of some modules, by dotted name."""

    def __init__(self, sources: dict[str, str], packages: set[str] = frozenset()):
        self.modules = {name: ast.parse(text) for name, text in sources.items()}
        self.packages = set(packages)
        self.aliases = {m: self._imports(m, tree) for m, tree in self.modules.items()}
        self.units: dict[str, Unit] = {}
        for module, tree in self.modules.items():
            for stmt in tree.body:
                self._index(module, stmt)

    @classmethod
    def of_repo(cls) -> Index:
        sources, packages = {}, set()
        for package in PACKAGES:
            for path in sorted((REPO / package).rglob("*.py")):
                parts = path.relative_to(REPO).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                    packages.add(".".join(parts))
                sources[".".join(parts)] = path.read_text()
        return cls(sources, packages)

    def _imports(self, module: str, tree: ast.Module) -> dict[str, str]:
        """Local name -> dotted target, of every import in the module (most are lazy, in
        the functions that use them)."""
        out = {}
        package = module if module in self.packages else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    top = a.name.split(".")[0]
                    out[a.asname or top] = a.name if a.asname else top
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for a in node.names:
                    out[a.asname or a.name] = f"{base}.{a.name}"
        return out

    def _index(self, module: str, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{module}.{stmt.name}"
            self.units[name] = Unit(
                name, module, stmt, None, call_params(stmt, False), annotation_kinds(stmt.returns)
            )
        elif isinstance(stmt, ast.ClassDef):
            name = f"{module}.{stmt.name}"
            defs = [s for s in stmt.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)]
            rest = [s for s in stmt.body if s not in defs]
            # Without an __init__ (a dataclass), the constructor takes the annotated fields.
            fields = [s.target.id for s in rest if isinstance(s, ast.AnnAssign)
                      and isinstance(s.target, ast.Name)]  # fmt: skip
            self.units[name] = Unit(
                name, module, ast.Module(body=rest, type_ignores=[]), name, fields,
                methods=[f"{name}.{s.name}" for s in defs], bases=stmt.bases,
            )  # fmt: skip
            for s in defs:
                self.units[f"{name}.{s.name}"] = Unit(
                    f"{name}.{s.name}", module, s, name, call_params(s, True),
                    annotation_kinds(s.returns),
                )  # fmt: skip
        elif isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    self.units[f"{module}.{t.id}"] = Unit(f"{module}.{t.id}", module, stmt.value)

    def dotted(self, expr: ast.AST, module: str, cls: str | None) -> str | None:
        """The dotted name an expression spells, through the module's imports."""
        if isinstance(expr, ast.Name):
            if f"{module}.{expr.id}" in self.units:
                return f"{module}.{expr.id}"
            return self.aliases[module].get(expr.id)
        if isinstance(expr, ast.Attribute):
            if isinstance(expr.value, ast.Name) and expr.value.id == "self" and cls:
                return f"{cls}.{expr.attr}"
            base = self.dotted(expr.value, module, cls)
            return f"{base}.{expr.attr}" if base else None
        return None

    def resolve(self, dotted: str | None, depth: int = 0) -> Unit | None:
        """The unit a dotted name ends at, following re-exports; None for anything else."""
        if dotted is None or depth > 8:
            return None
        if dotted in self.units:
            return self.units[dotted]
        parts = dotted.split(".")
        for i in range(len(parts) - 1, 0, -1):
            module, rest = ".".join(parts[:i]), parts[i:]
            if module in self.modules:
                target = self.aliases[module].get(rest[0])
                return self.resolve(".".join([target, *rest[1:]]), depth + 1) if target else None
        return None


def snapshot(kinds: dict[str, dict[str, set[str]]]) -> dict:
    return {k: {p: frozenset(v) for p, v in d.items()} for k, d in kinds.items()}


class Reads:
    """The config keys read by everything reachable from one root unit: `where` maps each
    key to the places that read it."""

    def __init__(self, index: Index, root: Unit, root_kinds: dict[str, set[str]]):
        self.index = index
        self.param_kinds: dict[str, dict[str, set[str]]] = {root.name: root_kinds}
        self.attr_kinds: dict[str, dict[str, set[str]]] = {}  # class -> self.<attr> -> kinds
        self.where: dict[str, set[str]] = {}
        reached = self._reach(root)
        for _ in range(20):  # kinds flow along calls and attributes until nothing changes
            before = snapshot(self.param_kinds), snapshot(self.attr_kinds)
            for unit in reached:
                self._scan(unit)
            if (snapshot(self.param_kinds), snapshot(self.attr_kinds)) == before:
                break

    def _reach(self, root: Unit) -> list[Unit]:
        """Every unit the root names, and what those name in turn. A method of a class that
        is reached counts once anything reached calls or names an attribute of its name, or
        when it is a dunder (Ray calls an actor's __init__ and __call__)."""
        seen, queue, names = {root.name: root}, [root], set()
        waiting: dict[str, Unit] = {}
        while queue:
            while queue:
                unit = queue.pop()
                found = [self.index.resolve(self.index.dotted(b, unit.module, None))
                         for b in unit.bases]  # fmt: skip
                for m in unit.methods:
                    waiting.setdefault(m, self.index.units[m])
                for node in ast.walk(unit.node):
                    if isinstance(node, ast.Attribute):
                        names.add(node.attr)
                    if isinstance(node, ast.Name | ast.Attribute):
                        found.append(
                            self.index.resolve(self.index.dotted(node, unit.module, unit.cls))
                        )
                for f in found:
                    if f is not None and f.name not in seen:
                        seen[f.name] = f
                        queue.append(f)
            for name, method in list(waiting.items()):
                short = name.rpartition(".")[2]
                if name in seen:
                    del waiting[name]
                elif short in names or (short.startswith("__") and short.endswith("__")):
                    del waiting[name]
                    seen[name] = method
                    queue.append(method)
        return list(seen.values())

    def _scan(self, unit: Unit) -> None:
        env: dict[str, set[str]] = {}
        for p, k in self.param_kinds.get(unit.name, {}).items():
            env.setdefault(p, set()).update(k)
        is_class = unit.cls == unit.name
        for node in ast.walk(unit.node):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs):
                    if kinds := annotation_kinds(a.annotation):
                        env.setdefault(a.arg, set()).update(kinds)
            elif is_class and isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if kinds := annotation_kinds(node.annotation):
                    self.attr(unit.cls, node.target.id).update(kinds)
        assigns = [n for n in ast.walk(unit.node) if isinstance(n, ast.Assign | ast.NamedExpr)]
        for _ in range(3):  # chains of assignments within the function
            for node in assigns:
                kinds = self.kinds(node.value, env, unit)
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if not kinds:
                        break
                    if isinstance(t, ast.Name):
                        env.setdefault(t.id, set()).update(kinds)
                    elif self_attr(t) and unit.cls:
                        self.attr(unit.cls, t.attr).update(kinds)
        for node in ast.walk(unit.node):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                for kind in self.kinds(node.value, env, unit):
                    if node.attr in FIELDS.get(kind, ()):
                        self.read(f"{kind}.{node.attr}", unit, node)
            elif isinstance(node, ast.Call):
                self._call(node, env, unit)

    def attr(self, cls: str, name: str) -> set[str]:
        return self.attr_kinds.setdefault(cls, {}).setdefault(name, set())

    def _call(self, node: ast.Call, env: dict[str, set[str]], unit: Unit) -> None:
        """A read through getattr, and the kinds of the arguments handed to the callee."""
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
            name = node.args[1]
            for kind in self.kinds(node.args[0], env, unit):
                if isinstance(name, ast.Constant) and name.value in FIELDS.get(kind, ()):
                    self.read(f"{kind}.{name.value}", unit, node)
            return
        callee = self.index.resolve(self.index.dotted(func, unit.module, unit.cls))
        if callee is None:
            return
        target, params, fields = callee, callee.params, False
        if callee.cls == callee.name:  # a class: its __init__, else its dataclass fields
            init = self.index.units.get(f"{callee.name}.__init__")
            target, params, fields = (init, init.params, False) if init else (callee, params, True)
        bound = [*zip(params, node.args, strict=False)]
        bound += [(k.arg, k.value) for k in node.keywords if k.arg]
        for param, arg in bound:
            if kinds := self.kinds(arg, env, unit):
                if fields:
                    self.attr(target.name, param).update(kinds)
                else:
                    self.param_kinds.setdefault(target.name, {}).setdefault(param, set()).update(
                        kinds
                    )

    def kinds(self, expr: ast.AST, env: dict[str, set[str]], unit: Unit) -> set[str]:
        """What an expression holds: the whole config (ROOT), a section (its name), or
        nothing known (empty)."""
        if isinstance(expr, ast.Name):
            return env.get(expr.id, set())
        if isinstance(expr, ast.Attribute):
            if self_attr(expr) and unit.cls:
                return self.attr_kinds.get(unit.cls, {}).get(expr.attr, set())
            if ROOT in self.kinds(expr.value, env, unit) and expr.attr in SECTIONS:
                return {expr.attr}
            return set()
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr == "model_copy":
                return self.kinds(func.value, env, unit)
            if isinstance(func, ast.Name) and func.id in KIND_OF_CLASS:
                return {KIND_OF_CLASS[func.id]}
            callee = self.index.resolve(self.index.dotted(func, unit.module, unit.cls))
            return set(callee.returns) if callee is not None else set()
        if isinstance(expr, ast.BoolOp):
            return set().union(*(self.kinds(v, env, unit) for v in expr.values))
        if isinstance(expr, ast.IfExp):
            return self.kinds(expr.body, env, unit) | self.kinds(expr.orelse, env, unit)
        return set()

    def read(self, key: str, unit: Unit, node: ast.AST) -> None:
        self.where.setdefault(key, set()).add(f"{unit.module}:{node.lineno}")


def self_attr(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def run_root(index: Index, module: str) -> Unit:
    """The `run=` of the module's StageSpec(...), as a unit whose first parameter is a Config."""
    for node in ast.walk(index.modules[module]):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "StageSpec":
            run = next(k.value for k in node.keywords if k.arg == "run")
            if isinstance(run, ast.Lambda):
                return Unit(f"{module}.STAGE.run", module, run, None, call_params(run, False))
            return index.resolve(index.dotted(run, module, None))
    raise AssertionError(f"{module} declares no StageSpec")


def stage_reads(index: Index, module: str) -> dict[str, set[str]]:
    root = run_root(index, module)
    return Reads(index, root, {root.params[0]: {ROOT}}).where


@pytest.fixture(scope="module")
def repo_index() -> Index:
    return Index.of_repo()


@pytest.mark.parametrize("spec", STAGES, ids=[s.name for s in STAGES])
def test_every_config_read_of_a_stage_is_in_its_fingerprint_or_declared_harmless(spec, repo_index):
    ignored = spec.ignored_keys
    assert not set(ignored) & set(spec.config_keys), "a key is both defining and ignored"
    for key, reason in ignored.items():
        section, _, name = key.partition(".")
        assert name in FIELDS.get(section, ()), f"{key} is no config key"
        assert reason.strip(), f"{key} needs a reason"
    reads = stage_reads(repo_index, spec.run.__module__)
    unclassified = {
        key: sorted(where)
        for key, where in reads.items()
        if key not in spec.config_keys and key not in ignored
    }
    assert not unclassified, (
        f"{spec.name} reads config keys that are neither in its config_keys (they change "
        f"the outputs) nor in its ignored_keys (with the reason they do not): {unclassified}"
    )
    # A key listed but never read hides nothing; it is stale documentation.
    assert set(ignored) <= set(reads), f"ignored but never read: {set(ignored) - set(reads)}"


def test_every_registered_metric_scorer_reads_only_what_evaluate_declares(repo_index):
    """Evaluate builds each scorer through the metric registry (`SPECS[m].build`), which the
    reach above does not follow: every registered builder is audited as a root of its own,
    its weights the keypoints config where the keypoint estimator scores the metric."""
    from pipeline.metrics.registry import ESTIMATOR, SPECS
    from stages.evaluate import STAGE

    declared = set(STAGE.config_keys) | set(STAGE.ignored_keys)
    for spec in SPECS.values():
        build = getattr(spec.build, "func", spec.build)  # functools.partial: its function
        root = repo_index.units[f"{build.__module__}.{build.__qualname__}"]
        weights = {"keypoints"} if spec.weight == ESTIMATOR else set()
        reads = Reads(repo_index, root, {root.params[-1]: weights}).where
        assert set(reads) <= declared, (spec.name, sorted(set(reads) - declared))
        assert reads or spec.weight != ESTIMATOR, f"{spec.name}: the estimator's reads not found"


LIBRARY = """
from pipeline.core.config import GenerateConfig, KeypointsConfig


def forward(net, gc: GenerateConfig):
    return net(gc.ngf)


class Pool:
    def __init__(self, kc):
        self.kc = kc

    def size(self):
        return self.kc.concurrency


def helper(section, extra):
    if section.minmax:
        return extra.dtype
    return None
"""
STAGE_MODULE = """
from fake.library import Pool, forward
from stages.spec import StageSpec


def run_it(cfg, fresh):
    from fake import library

    gc = cfg.generate
    forward(None, gc)
    library.helper(cfg.generate, extra=gc.model_copy())
    pool = Pool(cfg.keypoints)
    pool.size()
    return cfg.dataset.root


STAGE = StageSpec(name="x", version=1, run=lambda cfg, fresh: run_it(cfg, fresh))
"""


def test_the_audit_finds_reads_in_library_code_through_arguments_and_attributes():
    index = Index({"fake.library": LIBRARY, "fake.stage": STAGE_MODULE, "fake": ""})
    reads = stage_reads(index, "fake.stage")
    assert set(reads) == {
        "dataset.root",
        "generate.ngf",  # an annotated parameter
        "generate.minmax",  # a section passed by position to an unannotated parameter
        "generate.dtype",  # ... and a copy of one by keyword
        "keypoints.concurrency",  # a section kept as an attribute by a class
    }
    line = LIBRARY.splitlines().index("        return extra.dtype") + 1
    assert reads["generate.dtype"] == {f"fake.library:{line}"}
