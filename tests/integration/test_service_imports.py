"""The service imported and its app built in a fresh interpreter: no torch, no timm in `sys.modules`."""

from __future__ import annotations

import subprocess
import sys


def test_service_never_imports_torch_or_timm() -> None:
    """The runtime must install and run without the export stack."""
    code = (
        "import sys\n"
        "from simpool_serve.service.app import create_app\n"
        "from simpool_serve.service.cli import main\n"
        "from simpool_serve.service.settings import Settings\n"
        "create_app(Settings())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'torchvision')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"
