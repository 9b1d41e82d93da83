"""pip drives CMake (CMakeLists.txt is the single build description).

    pip install --no-build-isolation -e .     # or: pip install --no-build-isolation .

--no-build-isolation builds against the torch already installed (the extension must match
it). MAX_JOBS sets the parallel jobs, TORCH_CUDA_ARCH_LIST the CUDA architectures
(default "8.0;9.0a"), MPT_EXT_CUDA=OFF forces the CPU-only build.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _tool(name: str) -> str:
    """cmake / ninja from the pip packages of this Python (a venv need not be on PATH; the
    system cmake may be too old), else from PATH."""
    try:
        module = __import__(name)
        path = Path(module.CMAKE_BIN_DIR if name == "cmake" else module.BIN_DIR) / name
        if path.exists():
            return str(path)
    except (ImportError, AttributeError):
        pass
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: pip install cmake ninja")
    return found


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("MPT_EXT_BUILD_DIR", ROOT / "build"))
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake, ninja = _tool("cmake"), _tool("ninja")
        cfg = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={ninja}",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DMPT_EXT_OUTPUT_DIR={out_dir}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('CMAKE_BUILD_TYPE', 'Release')}",
        ]
        if "MPT_EXT_CUDA" in os.environ:
            cfg.append(f"-DMPT_EXT_CUDA={os.environ['MPT_EXT_CUDA']}")
        subprocess.run(cfg, check=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run([cmake, "--build", str(build_dir), "-j", jobs], check=True)


setup(ext_modules=[CMakeExtension("mpt_ext._C")], cmdclass={"build_ext": CMakeBuild})
