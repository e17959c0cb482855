/* For test_elf.py: symbols placed by hand to pin SymbolTable's rules. */
    .text
    .globl  sized
    .type   sized, @function
sized:
    .fill 16, 1, 0x90
    .size   sized, 16
label_after_sized:
    .fill 8, 1, 0x90
    .globl  outer
    .type   outer, @function
outer:
    .fill 8, 1, 0x90
    .type   inner, @function
inner:
    .fill 4, 1, 0x90
    .size   inner, 4
    .fill 20, 1, 0x90
    .size   outer, 32
    .globl  real_name
    .type   real_name, @function
    .weak   weak_name
    .type   weak_name, @function
    .type   local_name, @function
    .type   notype_name, @notype
real_name:
weak_name:
local_name:
notype_name:
    .fill 8, 1, 0x90
    .size   real_name, 8
    .size   weak_name, 8
    .size   local_name, 8
text_tail:
    .fill 4, 1, 0x90

    .section .tailcode, "ax", @progbits
    .p2align 6
tail_label:
    .fill 4, 1, 0x90

    .data
data_label:
    .quad 0
