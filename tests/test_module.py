"""The extension module is built the way free-threaded CPython needs:
multi-phase initialisation, heap types and per-module state."""

import importlib.util
import sys

import yimmo._yimmo as loaded


def _load_fresh():
    spec = importlib.util.find_spec("yimmo._yimmo")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_can_be_loaded_twice_with_separate_types():
    # Single-phase modules with static types give back the same objects;
    # multi-phase init executes the module again with types of its own.
    other = _load_fresh()
    assert other is not loaded
    assert other.Core is not loaded.Core
    assert other.FileWrapper is not loaded.FileWrapper
    assert loaded.Core.__module__ == "yimmo._yimmo"


def test_types_are_heap_types():
    Py_TPFLAGS_HEAPTYPE = 1 << 9
    for tp in (loaded.Core, loaded.FileWrapper):
        assert tp.__flags__ & Py_TPFLAGS_HEAPTYPE


def test_module_uses_multi_phase_init():
    spec = importlib.util.find_spec("yimmo._yimmo")
    module = spec.loader.create_module(spec)
    # Multi-phase init: create_module gives a module whose exec slot has
    # not run yet, so it has no types.
    assert not hasattr(module, "Core")
    spec.loader.exec_module(module)
    assert hasattr(module, "Core")
    assert sys.modules["yimmo._yimmo"] is loaded
