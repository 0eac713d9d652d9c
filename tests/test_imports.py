"""The package and every CPU module import without the optional heavy dependencies."""

import pkgutil
import subprocess
import sys

import lepton_edge

OPTIONAL = ("tensorrt", "pycuda", "cuda", "torch")


def cpu_modules() -> list[str]:
    """Every module of the package but ``__main__`` ones (importing those runs the program)."""
    modules = pkgutil.walk_packages(lepton_edge.__path__, "lepton_edge.")
    return sorted(m.name for m in modules if not m.name.endswith(".__main__"))


def test_every_module_imports_without_optional_dependencies():
    # Blocking an import by setting sys.modules[name] = None makes `import name` raise ImportError,
    # as on a machine without the package, whatever is installed here.
    code = f"""
import importlib, sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None
for mod in {cpu_modules()!r}:
    importlib.import_module(mod)
loaded = [m for m in {OPTIONAL!r} if sys.modules.get(m) is not None]
assert not loaded, loaded
print("ok", len({cpu_modules()!r}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_import_lepton_edge_loads_no_heavy_modules():
    code = "import sys, lepton_edge; print(sorted(m for m in ('cv2', 'onnxruntime', 'torch', 'tensorrt') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
