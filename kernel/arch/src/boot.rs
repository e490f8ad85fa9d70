//! Boot headers and the 32-to-64-bit trampoline.
//!
//! One ELF64 serves two loaders:
//! - QEMU `-kernel` reads the PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`) and enters
//!   `pvh_entry32` in 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
//! - GRUB's `multiboot2` command reads the Multiboot2 header and enters the ELF entry
//!   point `mb2_entry32` in the same mode, `eax` = 0x36d76289, `ebx` = the boot info.
//!
//! Both paths zero `.bss`, identity-map the first 4 GiB with 2 MiB pages, enable
//! PAE, SSE and long mode, load a small GDT and jump to 64-bit code, which calls
//! [`arch_start64`] with the boot protocol and the boot-info address.

use crate::bootinfo::{BootInfo, Protocol};

core::arch::global_asm!(
    r#"
    .set MB2_MAGIC, 0xe85250d6
    .set MB2_BOOT_MAGIC, 0x36d76289

    .section .multiboot2_header, "a"
    .balign 8
mb2_header_start:
    .long MB2_MAGIC
    .long 0
    .long mb2_header_end - mb2_header_start
    .long 0x100000000 - (MB2_MAGIC + (mb2_header_end - mb2_header_start))
    /* end tag */
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .balign 4
    .quad pvh_entry32
    .balign 4

    .section .boot.text, "ax"
    .code32
    .global pvh_entry32
pvh_entry32:
    mov $1, %edi
    mov %ebx, %esi
    jmp boot_common32

    .global mb2_entry32
mb2_entry32:
    mov $2, %edi
    mov %ebx, %esi
    cmp $MB2_BOOT_MAGIC, %eax
    je boot_common32
    mov $0, %edi

boot_common32:
    cli
    cld
    mov %edi, %ebp
    mov %esi, %ebx

    /* zero .bss */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb

    mov $boot_stack_top, %esp

    /* PML4[0] -> PDPT */
    mov $boot_pdpt, %eax
    or $3, %eax
    mov %eax, boot_pml4

    /* PDPT[0..4] -> four page directories */
    xor %ecx, %ecx
.Lfill_pdpt:
    mov %ecx, %eax
    shl $12, %eax
    add $boot_pd, %eax
    or $3, %eax
    mov %eax, boot_pdpt(,%ecx,8)
    inc %ecx
    cmp $4, %ecx
    jne .Lfill_pdpt

    /* 2048 x 2 MiB pages: identity map of 0..4 GiB */
    xor %ecx, %ecx
.Lfill_pd:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, boot_pd(,%ecx,8)
    inc %ecx
    cmp $2048, %ecx
    jne .Lfill_pd

    mov $boot_pml4, %eax
    mov %eax, %cr3

    /* CR4: PAE | OSFXSR | OSXMMEXCPT */
    mov %cr4, %eax
    or $0x620, %eax
    mov %eax, %cr4

    /* EFER.LME */
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr

    /* CR0: PG | MP | PE, clear EM */
    mov %cr0, %eax
    and $0xFFFFFFFB, %eax
    or $0x80000003, %eax
    mov %eax, %cr0

    lgdt boot_gdt_pointer
    push $0x08
    push $boot_entry64
    lret

    .code64
boot_entry64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %ax, %ax
    mov %ax, %fs
    mov %ax, %gs
    mov $boot_stack_top, %rsp
    mov %ebp, %edi
    mov %ebx, %esi
    xor %ebp, %ebp
    call arch_start64
.Lhalt_forever:
    cli
    hlt
    jmp .Lhalt_forever

    .section .boot.rodata, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF
    .quad 0x00CF92000000FFFF
boot_gdt_end:
boot_gdt_pointer:
    .short boot_gdt_end - boot_gdt - 1
    .quad boot_gdt

    .section .bss.boot, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096 * 4
    .balign 16
boot_stack_bottom:
    .skip 65536
    .global boot_stack_top
boot_stack_top:
"#,
    options(att_syntax)
);

unsafe extern "Rust" {
    /// The appliance's entry point, defined by the image crate.
    fn kernel_main(boot: &'static BootInfo) -> !;
}

/// First Rust code: called by the trampoline in long mode, on the boot stack.
///
/// `protocol` is 1 for PVH, 2 for Multiboot2, 0 when the loader was not recognised;
/// `info` is the physical (= virtual) address of the loader's boot information.
#[unsafe(no_mangle)]
pub extern "C" fn arch_start64(protocol: u32, info: u32) -> ! {
    let protocol = match protocol {
        1 => Protocol::Pvh,
        2 => Protocol::Multiboot2,
        _ => Protocol::Unknown,
    };
    crate::cpu::init();
    // SAFETY: the loader passed `info` as the address of its boot information in
    // identity-mapped memory, and nothing has overwritten it yet: the heap is not set up
    // and the trampoline only wrote `.bss`.
    let boot = unsafe { crate::bootinfo::parse(protocol, info as usize) };
    crate::memory::init_heap(boot);
    // SAFETY: `kernel_main` is defined exactly once, by the image, with this signature.
    unsafe { kernel_main(boot) }
}
