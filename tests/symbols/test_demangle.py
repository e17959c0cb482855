"""Demangling in the four modes, on a C++ program built by g++ and checked against c++filt."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.symbols import Symbolizer
from agent.symbols.demangle import Demangler, simplify_name
from tests.conftest import compile_workload

# mangled: (full, templates, simplified)
EXPECTED = {
    "_ZN6shapes4areaEii": ("shapes::area(int, int)", "shapes::area", "shapes::area"),
    "_ZN6shapes4areaEd": ("shapes::area(double)", "shapes::area", "shapes::area"),
    "_ZNK6shapes3BoxIiE3getEv": (
        "shapes::Box<int>::get() const",
        "shapes::Box<int>::get",
        "shapes::Box::get",
    ),
    "_ZNK6shapes3BoxIiEltERKS1_": (
        "shapes::Box<int>::operator<(shapes::Box<int> const&) const",
        "shapes::Box<int>::operator<",
        "shapes::Box::operator<",
    ),
    "_ZNK6shapes3BoxIiEclEi": (
        "shapes::Box<int>::operator()(int) const",
        "shapes::Box<int>::operator()",
        "shapes::Box::operator()",
    ),
    "_ZNK6shapes3BoxIdEclEd": (
        "shapes::Box<double>::operator()(double) const",
        "shapes::Box<double>::operator()",
        "shapes::Box::operator()",
    ),
    "_ZN6shapes12_GLOBAL__N_16hiddenEi": (
        "shapes::(anonymous namespace)::hidden(int)",
        "shapes::(anonymous namespace)::hidden",
        "shapes::(anonymous namespace)::hidden",
    ),
    "_ZN6shapes5applyIPFiiEEEiT_i": (
        "int shapes::apply<int (*)(int)>(int (*)(int), int)",
        "shapes::apply<int (*)(int)>",
        "shapes::apply",
    ),
}
MODES = ("full", "templates", "simplified")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demangle")
    # No PIE: the runtime address of a function is its symbol value.
    return compile_workload("shapes.cpp", root / "shapes", "-O0", "-no-pie")


def symbol_values(path: Path) -> dict[str, int]:
    out = subprocess.run(
        ["nm", "--defined-only", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return {fields[2]: int(fields[0], 16) for fields in map(str.split, out.splitlines())}


def cxxfilt(name: str) -> str:
    return subprocess.run(["c++filt", name], check=True, capture_output=True, text=True).stdout


@pytest.mark.parametrize("mode", ["none", *MODES])
def test_frames_of_a_cpp_program_are_named_in_each_mode(program, run_workload, mode):
    values = symbol_values(program)
    assert set(EXPECTED) <= set(values)
    workload = run_workload(program)
    with Symbolizer(demangle=mode) as symbolizer:
        got = {
            mangled: symbolizer.resolve_user(workload.pid, [values[mangled]])[0].name
            for mangled in EXPECTED
        }
    if mode == "none":
        assert got == {mangled: mangled for mangled in EXPECTED}
    else:
        assert got == {mangled: names[MODES.index(mode)] for mangled, names in EXPECTED.items()}


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="binutils' c++filt is missing")
def test_full_mode_matches_cxxfilt():
    demangler = Demangler("full")
    for mangled, (full, _, _) in EXPECTED.items():
        assert demangler.demangle(mangled) == cxxfilt(mangled).strip() == full


@pytest.mark.parametrize(
    ("full", "templates", "simplified"),
    [
        ("Foo::bar() [clone .cold]", "Foo::bar", "Foo::bar"),
        ("Foo::operator int() const", "Foo::operator int", "Foo::operator int"),
        ("Foo::operator new(unsigned long)", "Foo::operator new", "Foo::operator new"),
        ("ns::Box<int>::operator<<(int)", "ns::Box<int>::operator<<", "ns::Box::operator<<"),
        (
            "non-virtual thunk to Foo::bar()",
            "non-virtual thunk to Foo::bar",
            "non-virtual thunk to Foo::bar",
        ),
        (
            "main::{lambda(int)#1}::operator()(int) const",
            "main::{lambda(int)#1}::operator()",
            "main::{lambda(int)#1}::operator()",
        ),
        ("outer(int)::Local::method()", "outer::Local::method", "outer::Local::method"),
        (
            "std::vector<int, std::allocator<int> >::push_back(int&&)",
            "std::vector<int, std::allocator<int> >::push_back",
            "std::vector::push_back",
        ),
        ("operators::foo()", "operators::foo", "operators::foo"),
    ],
)
def test_simplify_name_handles_operators_lambdas_and_clones(full, templates, simplified):
    assert simplify_name(full, keep_templates=True) == templates
    assert simplify_name(full, keep_templates=False) == simplified


def test_rust_legacy_names_lose_their_hash():
    mangled = "_ZN4core3ptr42drop_in_place$LT$alloc..string..String$GT$17h0123456789abcdefE"
    for mode in ("full", "templates", "simplified"):
        assert (
            Demangler(mode).demangle(mangled) == "core::ptr::drop_in_place<alloc::string::String>"
        )


def test_unmangled_and_invalid_names_come_back_unchanged():
    demangler = Demangler("full")
    assert demangler.demangle("main") == "main"
    assert demangler.demangle("_Znot_really") == "_Znot_really"


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="simplified"):
        Symbolizer(demangle="pretty")
