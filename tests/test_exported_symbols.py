"""The native libraries export what their users link against and nothing else: npuq._C its module init
function, libnpuq the C ABI (npuq_*). Everything else (the kernels, the C++ standard library's template
instantiations) stays local, so that it cannot be bound to another library's copies in the same process
(torch, a test bench's own libstdc++ build)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from npuq import _C
from support.helpers import skip_unless_ci


def _exported(path: Path) -> set[str]:
    readelf = shutil.which("readelf")
    if readelf is None:
        skip_unless_ci("readelf (binutils) is not installed")
    out = subprocess.run([readelf, "-W", "--dyn-syms", str(path)], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        # Num: Value Size Type Bind Vis Ndx Name; defined (Ndx not UND) global or weak symbols are exported
        if len(fields) >= 8 and fields[4] in ("GLOBAL", "WEAK") and fields[6] != "UND":
            names.add(fields[7].split("@")[0])
    return names


def test_the_python_module_exports_its_init_function_only():
    assert _exported(Path(_C.__file__)) == {"PyInit__C"}


def test_libnpuq_exports_the_c_abi_only():
    from npuq import capi

    names = _exported(Path(capi.get_library()))
    assert names and all(n.startswith("npuq_") for n in names), sorted(n for n in names if not n.startswith("npuq_"))
    header = (Path(capi.get_include()) / capi.HEADER_NAME).read_text()
    assert {n for n in names if f"{n}(" not in header} == set(), "exported but not declared in npuq.h"
