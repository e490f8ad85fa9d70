//! GDT, TSS, IDT, interrupt entry stubs and the interrupt dispatcher.
//!
//! Every vector has a 16-byte stub (in `global_asm!`, stable Rust) that pushes a dummy
//! error code where the CPU pushes none, then the vector number, and jumps to one
//! common entry. The common entry saves the general registers, clears the direction
//! flag and calls [`arch_interrupt_dispatch`] with a pointer to the saved
//! [`InterruptFrame`].
//!
//! Double fault, NMI and machine check run on their own IST stacks, so a kernel stack
//! overflow still produces a readable report.

use core::fmt::Write as _;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::{lidt, load_tss};
use x86_64::structures::DescriptorTablePointer;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

use crate::hooks;
use crate::machine;

/// The 1 kHz tick's vector (local APIC timer).
pub const TIMER_VECTOR: u8 = 32;
/// First vector of the 8259 PICs (IRQ 0 = the PIT, the main loop's wake-up).
pub const IRQ_BASE: u8 = 40;
/// The PIT's vector: 4 kHz wake-ups (and, without a local APIC timer, the 1 kHz tick).
pub const WAKE_VECTOR: u8 = IRQ_BASE;
/// The local APIC spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IST_STACK_SIZE: usize = 16 * 1024;
const IST_DOUBLE_FAULT: u16 = 0;
const IST_NMI: u16 = 1;
const IST_MACHINE_CHECK: u16 = 2;

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

static mut IST_STACKS: [IstStack; 3] = [const { IstStack([0; IST_STACK_SIZE]) }; 3];

static TSS: Once<TaskStateSegment> = Once::new();
static GDT: Once<GlobalDescriptorTable> = Once::new();

/// One IDT gate (64-bit interrupt gate).
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn interrupt(handler: u64, selector: u16, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector,
            ist,
            // present, DPL 0, 64-bit interrupt gate (IF cleared on entry)
            attributes: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt([Gate; 256]);

static mut IDT: Idt = Idt([Gate::MISSING; 256]);

unsafe extern "C" {
    /// First of 256 stubs, 16 bytes apart (defined below in assembly).
    static isr_stub_table: u8;
}

core::arch::global_asm!(
    r#"
    .section .text.isr, "ax"
    .code64
    .balign 16
    .global isr_stub_table
isr_stub_table:
    .set vector, 0
    .rept 256
    .balign 16
    .if (vector == 8) || (vector == 10) || (vector == 11) || (vector == 12) || (vector == 13) || (vector == 14) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30)
    pushq $vector
    .else
    pushq $0
    pushq $vector
    .endif
    jmp isr_common
    .set vector, vector + 1
    .endr

isr_common:
    cld
    push %rax
    push %rbx
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %rbp
    push %r8
    push %r9
    push %r10
    push %r11
    push %r12
    push %r13
    push %r14
    push %r15
    mov %rsp, %rdi
    mov %rsp, %rbx
    and $-16, %rsp
    call arch_interrupt_dispatch
    mov %rbx, %rsp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rbp
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rbx
    pop %rax
    add $16, %rsp
    iretq
"#,
    options(att_syntax)
);

/// The registers saved by the interrupt entry, lowest address first.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct InterruptFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    /// The vector number the stub pushed.
    pub vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Loads the GDT (with TSS and IST stacks) and the IDT. Interrupts stay disabled.
pub fn init() {
    let tss = TSS.call_once(|| {
        let mut tss = TaskStateSegment::new();
        for (slot, index) in [IST_DOUBLE_FAULT, IST_NMI, IST_MACHINE_CHECK]
            .into_iter()
            .enumerate()
        {
            // SAFETY: only the address of the static is taken; it is written by nothing but
            // the CPU, when it switches to this IST stack.
            let base = unsafe { core::ptr::addr_of!(IST_STACKS[slot]) } as u64;
            tss.interrupt_stack_table[index as usize] = VirtAddr::new(base + IST_STACK_SIZE as u64);
        }
        tss
    });
    let gdt = GDT.call_once(|| {
        let mut gdt = GlobalDescriptorTable::new();
        gdt.append(Descriptor::kernel_code_segment());
        gdt.append(Descriptor::kernel_data_segment());
        gdt.append(Descriptor::tss_segment(tss));
        gdt
    });
    gdt.load();
    let code = x86_64::structures::gdt::SegmentSelector(0x08);
    let data = x86_64::structures::gdt::SegmentSelector(0x10);
    let tss_selector = x86_64::structures::gdt::SegmentSelector(0x18);
    // SAFETY: the selectors name the code, data and TSS descriptors appended above, in
    // that order, to the GDT that was just loaded.
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_selector);
    }

    // Only the address of the assembly-defined symbol is taken.
    let stubs = core::ptr::addr_of!(isr_stub_table) as u64;
    // SAFETY: interrupts are disabled and this runs once, before anything reads the IDT,
    // so this is the only reference to it.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for (vector, gate) in idt.0.iter_mut().enumerate() {
        let ist = match vector {
            8 => IST_DOUBLE_FAULT + 1,
            2 => IST_NMI + 1,
            18 => IST_MACHINE_CHECK + 1,
            _ => 0,
        } as u8;
        *gate = Gate::interrupt(stubs + 16 * vector as u64, 0x08, ist);
    }
    let pointer = DescriptorTablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: VirtAddr::new(idt as *const Idt as u64),
    };
    // SAFETY: the IDT is a static, so it lives forever, and every gate points at a stub.
    unsafe { lidt(&pointer) };
}

static SPURIOUS: AtomicU64 = AtomicU64::new(0);
static REPORTING: AtomicBool = AtomicBool::new(false);

/// Interrupts that had no handler (spurious or unexpected IRQs).
pub fn spurious_interrupts() -> u64 {
    SPURIOUS.load(Ordering::Relaxed)
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "non-maskable interrupt (NMI)",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range exceeded (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack-segment fault (#SS)",
    "general protection fault (#GP)",
    "page fault (#PF)",
    "reserved",
    "x87 floating-point error (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD floating-point error (#XM)",
    "virtualization exception (#VE)",
    "control protection (#CP)",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security exception (#SX)",
    "reserved",
];

/// Called by the common interrupt entry with interrupts disabled.
#[unsafe(no_mangle)]
extern "C" fn arch_interrupt_dispatch(frame: &mut InterruptFrame) {
    let vector = frame.vector as u8;
    match vector {
        0..=31 => exception(frame),
        TIMER_VECTOR => {
            crate::timer::on_tick();
            crate::timer::end_of_interrupt(vector);
        }
        WAKE_VECTOR => {
            crate::timer::on_wake();
            crate::timer::end_of_interrupt(vector);
        }
        SPURIOUS_VECTOR => {
            SPURIOUS.fetch_add(1, Ordering::Relaxed);
        }
        _ => {
            if !hooks::irq(vector) {
                SPURIOUS.fetch_add(1, Ordering::Relaxed);
            }
            crate::timer::end_of_interrupt(vector);
        }
    }
}

fn exception(frame: &InterruptFrame) -> ! {
    if REPORTING.swap(true, Ordering::SeqCst) {
        // A fault while reporting a fault: give up without printing.
        machine::fail_stop();
    }
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let name = EXCEPTION_NAMES[frame.vector as usize & 31];
    let mut out = hooks::ReportWriter;
    let _ = writeln!(out, "\r\n*** CPU EXCEPTION {}: {} ***", frame.vector, name);
    let _ = writeln!(
        out,
        "error_code=0x{:x} rip=0x{:016x} cs=0x{:x} rflags=0x{:x} rsp=0x{:016x} ss=0x{:x} cr2=0x{:016x}",
        frame.error_code, frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss, cr2
    );
    let _ = writeln!(
        out,
        "rax=0x{:016x} rbx=0x{:016x} rcx=0x{:016x} rdx=0x{:016x}",
        frame.rax, frame.rbx, frame.rcx, frame.rdx
    );
    let _ = writeln!(
        out,
        "rsi=0x{:016x} rdi=0x{:016x} rbp=0x{:016x} r8 =0x{:016x}",
        frame.rsi, frame.rdi, frame.rbp, frame.r8
    );
    let _ = writeln!(
        out,
        "r9 =0x{:016x} r10=0x{:016x} r11=0x{:016x} r12=0x{:016x}",
        frame.r9, frame.r10, frame.r11, frame.r12
    );
    let _ = writeln!(
        out,
        "r13=0x{:016x} r14=0x{:016x} r15=0x{:016x}",
        frame.r13, frame.r14, frame.r15
    );
    if frame.vector == 14 {
        let e = frame.error_code;
        let _ = writeln!(
            out,
            "page fault: {} {} in {} mode{}",
            if e & 1 != 0 {
                "protection violation"
            } else {
                "page not present"
            },
            if e & 2 != 0 {
                "on write"
            } else if e & 16 != 0 {
                "on instruction fetch"
            } else {
                "on read"
            },
            if e & 4 != 0 { "user" } else { "kernel" },
            if e & 8 != 0 { ", reserved bit set" } else { "" },
        );
    }
    let _ = writeln!(out, "*** system halted (exit code FAIL) ***");
    machine::fail_stop();
}
