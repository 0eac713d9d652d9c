"""Every TensorRT name the backend and builder use exists in the real bindings of each version.

There is no TensorRT here, so the check reads the compiled bindings instead: the small
``tensorrt_cu12_bindings`` / ``tensorrt_cu13_bindings`` wheels (no GPU libraries inside) are
downloaded once into ``~/.cache/lepton-edge/trt-bindings/`` and the printable strings of their
``tensorrt.so`` (pybind11 registers every class, method, property and enum member by name), plus the
identifiers of their ``__init__.py``, form the set of names each version has.

The names the code uses are collected from ``lepton_edge/runtime/backends/tensorrt.py`` (the shim and
the backend) and ``lepton_edge/engines/tensorrt_builder.py`` (the builder) with ``ast``: every
attribute read or written on an object that comes from TensorRT (the module from
``import_tensorrt()``, and anything obtained from it, followed through assignments and calls within
each module), every name probed with ``hasattr``, and every method overridden in a TensorRT subclass.
A name listed in ``VERSIONED_NAMES`` is checked only against the versions its range claims; every
other name must exist in all of them.

TensorRT 8.6 (JetPack 6.0) has no standalone bindings wheel, so 8.6 is covered by the strict fake
(tests/support/fake_tensorrt.py) only.
"""

from __future__ import annotations

import ast
import bisect
import functools
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import lepton_edge.engines.tensorrt_builder as builder_module
import lepton_edge.runtime.backends.tensorrt as trt_module

# (distribution, version, major): the JetPack 6.1/6.2 line, the newest 10.x, and an 11.x. Refresh
# with `pip index versions tensorrt_cu12_bindings` (and tensorrt_cu13_bindings).
WHEELS = (
    ("tensorrt_cu12_bindings", "10.3.0", 10),
    ("tensorrt_cu12_bindings", "10.16.1.11", 10),
    ("tensorrt_cu13_bindings", "11.4.0.106", 11),
)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64")
CACHE = Path(os.environ.get("LEPTON_TRT_BINDINGS_CACHE", Path.home() / ".cache" / "lepton-edge" / "trt-bindings"))
# Names that appear in the 11.x bindings for other reasons (DataType/enum members of other types),
# so their absence from BuilderFlag cannot be checked by strings.
AMBIGUOUS = frozenset({"FP16", "INT8"})


def _wheel(distribution: str, version: str) -> Path:
    pattern = f"{distribution}-{version}-*.whl"
    found = sorted(CACHE.glob(pattern))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    errors = []
    for platform in PLATFORMS:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.11", "--platform", platform, "-d", str(CACHE), f"{distribution}=={version}", "-q"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            errors.append(f"{platform}: timed out")
            continue
        found = sorted(CACHE.glob(pattern))
        if found:
            return found[0]
        last = out.stderr.strip().splitlines()[-1:] or [f"pip exited with {out.returncode}"]
        errors.append(f"{platform}: {last[0]}")
    pytest.skip(f"cannot download {distribution}=={version}: {'; '.join(errors)}")


class _BindingNames:
    """The names in a compiled bindings module.

    The linker merges a string literal into the tail of a longer one ("INPUT" is stored as the end of
    "CONDITIONAL_INPUT"), so a name counts as present when it is a whole identifier in some string or
    the end of a NUL-terminated string.
    """

    def __init__(self, binary: bytes, source: str) -> None:
        strings = [s.decode() for s in binary.split(b"\0") if re.fullmatch(rb"[\x20-\x7e]{3,}", s)]
        self.tokens = {t for s in strings for t in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s)}
        self.tokens.update(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", source))
        self.reversed_strings = sorted(s[::-1] for s in strings)

    def __contains__(self, name: str) -> bool:
        if name in self.tokens:
            return True
        key = name[::-1]
        index = bisect.bisect_left(self.reversed_strings, key)
        return index < len(self.reversed_strings) and self.reversed_strings[index].startswith(key)


def _binding_names(wheel: Path) -> _BindingNames:
    with zipfile.ZipFile(wheel) as archive:
        so = next(n for n in archive.namelist() if re.fullmatch(r"tensorrt[^/]*/tensorrt[^/]*\.so", n))
        init = so.rsplit("/", 1)[0] + "/__init__.py"
        return _BindingNames(archive.read(so), archive.read(init).decode())


@pytest.fixture(scope="module", params=WHEELS, ids=[f"{d}-{v}" for d, v, _ in WHEELS])
def bindings(request) -> tuple[str, int, _BindingNames]:
    distribution, version, major = request.param
    return version, major, _binding_names(_wheel(distribution, version))


# -- what the module uses ---------------------------------------------------------------------

class _Usage:
    """Names used on TensorRT objects in one module, found by following values from ``import_tensorrt()``."""

    def __init__(self, source: str) -> None:
        self.tree = ast.parse(source)
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node
        self.functions: dict[str, list[ast.FunctionDef]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef):
                self.functions.setdefault(node.name, []).append(node)
        self.tainted: set[tuple] = set()
        self._propagate()

    def _enclosing(self, node: ast.AST, kinds: tuple[type, ...]) -> ast.AST | None:
        node = self.parents.get(node)
        while node is not None and not isinstance(node, kinds):
            node = self.parents.get(node)
        return node

    @staticmethod
    def _local_names(function: ast.FunctionDef) -> set[str]:
        args = function.args
        names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).split(".")[0])
        return names

    def _key(self, node: ast.AST) -> tuple | None:
        """The variable a Name or ``self.attr`` refers to: (scope, name), resolved like Python closures."""
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            cls = self._enclosing(node, (ast.ClassDef,))
            return ("self", id(cls), node.attr)
        if isinstance(node, ast.Name):
            scope = self._enclosing(node, (ast.FunctionDef, ast.Lambda))
            while scope is not None:
                if isinstance(scope, ast.FunctionDef) and node.id in self._local_names(scope):
                    return (id(scope), node.id)
                scope = self._enclosing(scope, (ast.FunctionDef, ast.Lambda))
            return ("module", node.id)
        return None

    def _from_trt(self, expr: ast.AST) -> bool:
        """Whether ``expr`` (an attribute/call/subscript chain) starts at a TensorRT value."""
        while True:
            key = self._key(expr)
            if key is not None:
                return key in self.tainted
            if isinstance(expr, ast.Call):
                if isinstance(expr.func, ast.Name) and expr.func.id == "import_tensorrt":
                    return True
                expr = expr.func
            elif isinstance(expr, ast.Attribute | ast.Subscript):
                expr = expr.value
            elif isinstance(expr, ast.Dict):  # a table of TensorRT classes, indexed later
                return any(value is not None and self._from_trt(value) for value in expr.values)
            else:
                return False

    def _targets(self, target: ast.AST) -> list[tuple]:
        if isinstance(target, ast.Tuple | ast.List):
            return [k for element in target.elts for k in self._targets(element)]
        key = self._key(target)
        return [key] if key else []

    def _propagate(self) -> None:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for alias in node.names:
                    if alias.name.split(".")[0] == "tensorrt":
                        scope = self._enclosing(node, (ast.FunctionDef,))
                        self.tainted.add((id(scope), (alias.asname or alias.name).split(".")[0]))
        while True:
            before = len(self.tainted)
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                    if self._from_trt(node.value):
                        for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                            self.tainted.update(self._targets(target))
                elif isinstance(node, ast.For) and self._from_trt(node.iter):
                    self.tainted.update(self._targets(node.target))
                elif isinstance(node, ast.Call):
                    self._taint_parameters(node)
            if len(self.tainted) == before:
                return

    def _taint_parameters(self, call: ast.Call) -> None:
        name = call.func.id if isinstance(call.func, ast.Name) else (
            call.func.attr if isinstance(call.func, ast.Attribute) else None)
        for function in self.functions.get(name or "", []):
            params = [a.arg for a in function.args.posonlyargs + function.args.args]
            if isinstance(call.func, ast.Attribute) and params[:1] in (["self"], ["cls"]):
                params = params[1:]
            for param, arg in zip(params, call.args, strict=False):
                if self._from_trt(arg):
                    self.tainted.add((id(function), param))
            for keyword in call.keywords:
                if keyword.arg and self._from_trt(keyword.value):
                    self.tainted.add((id(function), keyword.arg))

    def attributes(self) -> set[str]:
        """Attribute names read or written on TensorRT values."""
        return {node.attr for node in ast.walk(self.tree)
                if isinstance(node, ast.Attribute) and self._from_trt(node.value)}

    def probes(self) -> set[str]:
        """Names tested with ``hasattr(<TensorRT value>, "name")``."""
        found = set()
        for node in ast.walk(self.tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hasattr"
                    and self._from_trt(node.args[0]) and isinstance(node.args[1], ast.Constant)):
                found.add(node.args[1].value)
        return found

    def overrides(self) -> set[str]:
        """Methods defined in subclasses of TensorRT classes (TensorRT calls them by these names)."""
        found = set()
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ClassDef) and any(self._from_trt(base) for base in node.bases):
                found.update(f.name for f in node.body if isinstance(f, ast.FunctionDef))
        return found


@functools.cache
def _used_names() -> tuple[frozenset[str], frozenset[str]]:
    used: set[str] = set()
    probes: set[str] = set()
    for module in (trt_module, builder_module):
        usage = _Usage(Path(module.__file__).read_text())
        used |= usage.attributes() | usage.probes() | usage.overrides()
        probes |= usage.probes()
    used = {n for n in used if not (n.startswith("__") and n != "__version__")}
    return frozenset(used), frozenset(probes)


def _claimed(name: str, major: int) -> bool:
    first, last = trt_module.VERSIONED_NAMES.get(name, (0, None))
    return first <= major and (last is None or major <= last)


def test_the_analysis_finds_the_api_in_use():
    used, probes = _used_names()
    # A broken analysis would silently check nothing; these are used for certain.
    for name in ("Runtime", "deserialize_cuda_engine", "execute_async_v3", "set_tensor_address", "Builder",
                 "OnnxParser", "parse_from_file", "get_error", "set_memory_pool_limit", "WORKSPACE",
                 "create_timing_cache", "set_timing_cache", "GPU_FALLBACK", "DLA_core", "ILogger", "Severity",
                 "log", "read_calibration_cache", "get_tensor_profile_shape", "nptype", "__version__"):
        assert name in used, name
    # Attributes of our own objects must not be mistaken for TensorRT's.
    for name in ("errors", "cache_reads", "device", "warmup_runs", "cuda_graph", "has_fp16_flag"):
        assert name not in used, name
    assert probes, "the shim's hasattr checks were found"


def test_every_probed_name_is_declared_in_the_shim():
    _, probes = _used_names()
    assert probes <= set(trt_module.VERSIONED_NAMES), probes - set(trt_module.VERSIONED_NAMES)


def test_used_names_exist_in_the_bindings(bindings):
    version, major, names = bindings
    used, _ = _used_names()
    missing = sorted(n for n in used if _claimed(n, major) and n not in names)
    assert not missing, f"TensorRT {version} bindings lack {missing}"


def test_names_the_shim_calls_removed_are_gone(bindings):
    version, major, names = bindings
    gone = sorted(n for n, (_, last) in trt_module.VERSIONED_NAMES.items()
                  if last is not None and major > last and n not in AMBIGUOUS)
    still_there = [n for n in gone if n in names]
    assert not still_there, f"TensorRT {version} still has {still_there}: widen VERSIONED_NAMES and the shim"
