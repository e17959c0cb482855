"""agent.symbols.kallsyms on captured text and on this machine's /proc/kallsyms."""

from __future__ import annotations

import io
import os
import time

import pytest

from agent.errors import SymbolError
from agent.symbols.kallsyms import read_kallsyms

CAPTURED = """\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t early_setup
ffffffff81002000 D some_data
ffffffff81003000 T do_work
ffffffff81004000 T _etext
ffffffffc0a00000 t nvme_probe\t[nvme]
ffffffffc0a00100 t nvme_remove\t[nvme]
ffffffffc0b00000 t ext4_fill_super\t[ext4]
ffffffffc0b00200 T ext4_sync_fs\t[ext4]
"""


def read(text: str):
    return read_kallsyms(io.StringIO(text))


def test_kernel_symbol_covers_up_to_the_next_text_symbol():
    kernel = read(CAPTURED)
    assert kernel.lookup(0xFFFFFFFF81001000) == ("early_setup", "kernel")
    # some_data is not text, so early_setup still covers its address.
    assert kernel.lookup(0xFFFFFFFF81002000) == ("early_setup", "kernel")
    assert kernel.lookup(0xFFFFFFFF81003FFF) == ("do_work", "kernel")


def test_module_symbols_name_their_module():
    kernel = read(CAPTURED)
    assert kernel.lookup(0xFFFFFFFFC0A00010) == ("nvme_probe", "nvme")
    assert kernel.lookup(0xFFFFFFFFC0B00000) == ("ext4_fill_super", "ext4")


def test_first_symbol_listed_at_an_address_wins():
    assert read(CAPTURED).lookup(0xFFFFFFFF81000010) == ("_stext", "kernel")


def test_addresses_outside_every_region_have_no_symbol():
    kernel = read(CAPTURED)
    assert kernel.lookup(0xFFFFFFFF80FFFFFF) is None
    assert kernel.lookup(0) is None
    # Past the last symbol of the kernel, of nvme and of everything.
    assert kernel.lookup(0xFFFFFFFF81004000) == ("_etext", "kernel")
    assert kernel.lookup(0xFFFFFFFF81004001) is None
    assert kernel.lookup(0xFFFFFFFFC0A00101) is None
    assert kernel.lookup(0xFFFFFFFFC0B00201) is None


def test_counts_only_text_symbols():
    assert len(read(CAPTURED)) == 8  # 9 text lines, two at one address


def test_zero_addresses_mean_hidden_by_kptr_restrict():
    hidden = "".join(
        f"0000000000000000 {line.split(' ', 1)[1]}\n" for line in CAPTURED.splitlines()
    )
    with pytest.raises(SymbolError) as caught:
        read(hidden)
    assert caught.value.path == "/proc/kallsyms"
    assert "kptr_restrict" in caught.value.reason


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("ffffffff81000000 T\n", "line 1"),
        ("ffffffff81000000 T ok\nzzzz T bad\n", "line 2"),
        ("ffffffff81000000 D only_data\n", "no kernel text symbols"),
        ("", "no kernel text"),
    ],
)
def test_malformed_kallsyms_raise_symbol_error(text, what):
    with pytest.raises(SymbolError, match=what):
        read(text)


@pytest.fixture(scope="module")
def real_kallsyms() -> str:
    if os.geteuid() != 0:
        pytest.skip("kallsyms addresses are hidden from non-root")
    with open("/proc/kallsyms") as stream:
        return stream.read()


def test_real_kallsyms_loads_in_well_under_a_second(real_kallsyms):
    started = time.perf_counter()
    with open("/proc/kallsyms") as stream:
        kernel = read_kallsyms(stream)
    assert time.perf_counter() - started < 1.0
    assert len(kernel) > 10_000


def test_real_kallsyms_lookups_agree_with_the_file(real_kallsyms):
    """Every 500th distinct text address of the file resolves to a name listed there."""
    kernel = read_kallsyms(io.StringIO(real_kallsyms))
    by_address: dict[int, set[str]] = {}
    for line in real_kallsyms.splitlines():
        fields = line.split()
        if fields[1] in "tTwW":
            by_address.setdefault(int(fields[0], 16), set()).add(fields[2])
    checked = 0
    for address, names in sorted(by_address.items())[::500]:
        found = kernel.lookup(address)
        assert found is not None and found[0] in names, hex(address)
        checked += 1
    assert checked > 20


def test_symbols_more_than_4_gb_apart_are_found():
    # arm64 places modules below the kernel's text, further than 32-bit offsets reach.
    kernel = read("ffff800080000000 T _stext\nffff000001000000 t mod_init\t[mod]\n")
    assert kernel.lookup(0xFFFF800080000000) == ("_stext", "kernel")
    assert kernel.lookup(0xFFFF000001000000) == ("mod_init", "mod")
    assert kernel.lookup(0xFFFF000000FFFFFF) is None
