"""Every hook is documented, exercised by a test plugin, and listed in the plugin guide."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(
    name
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(function, "scaisend_spec")
)


def test_there_are_hooks():
    assert {"register_features", "register_routes", "instrument", "startup"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_docstring_states_its_contract(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Called" in doc, f"{hook}: say when it is called"
    assert re.search(r"\breturn", doc, re.IGNORECASE), f"{hook}: say what it returns"
    assert len(doc.split()) >= 30, f"{hook}: the contract needs more than a line"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_typed(hook):
    signature = inspect.signature(getattr(hookspecs, hook))
    assert signature.return_annotation is not inspect.Signature.empty
    for parameter in signature.parameters.values():
        assert parameter.annotation is not inspect.Parameter.empty, f"{hook}({parameter.name})"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_used_by_a_test_plugin(hook):
    pattern = re.compile(rf"@hookimpl\s+(async\s+)?def {hook}\(", re.MULTILINE)
    sources = [p.read_text() for p in (ROOT / "tests").rglob("*.py")]
    assert any(pattern.search(source) for source in sources), f"no test implements {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_in_the_plugin_guide(hook):
    readme = (ROOT / "README.md").read_text()
    guide = readme[readme.index("## Writing a plugin") :]
    assert f"`{hook}" in guide, f"README's plugin guide does not describe {hook}"
