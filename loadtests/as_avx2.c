/* Preloaded by loadtests/as_avx2.py: a process that sees an x86 CPU without AVX-512 and without VNNI, so that
 * ONNX Runtime (MLAS), PyTorch and NumPy choose the AVX2 kernels they would choose on an AVX2-only machine, and
 * the kit's int8 its 7-bit weights.
 *
 * How: the kernel's CPUID faulting (arch_prctl ARCH_SET_CPUID, the `cpuid_fault` flag in /proc/cpuinfo) turns
 * every CPUID instruction into a SIGSEGV. The handler runs the real CPUID with faulting briefly off, clears the
 * bits below, and steps over the instruction. Faulting is per thread and inherited by new threads; execve turns
 * it off, and LD_PRELOAD, inherited too, turns it on again in every program started below (the Triton server,
 * its Python backend stubs).
 *
 * The program's own SIGSEGV handlers (Python's faulthandler, a server's crash printer) are kept and called for
 * every fault that is not a CPUID; without one, such a fault ends the process as it would have.
 *
 * Not hidden: the dynamic loader reads CPUID before any library starts, so glibc's memcpy and friends keep their
 * AVX-512 forms. The compute kernels, chosen later, do not.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

/* The /proc/cpuinfo names of the bits cleared below; builder/core/machine.py reads this list from the
 * environment and leaves these flags out of the ISA it reports. */
#define HIDDEN_ENV "KIT_CPUID_HIDDEN"
#define HIDDEN_FLAGS "avx512f avx512dq avx512ifma avx512pf avx512er avx512cd avx512bw avx512vl avx512vbmi " \
    "avx512_vbmi2 avx512_vnni avx512_bitalg avx512_vpopcntdq avx512_4vnniw avx512_4fmaps avx512_vp2intersect " \
    "amx_bf16 avx512_fp16 amx_tile amx_int8 avx_vnni avx512_bf16"
#define BIT(n) (1u << (n))
static const unsigned LEAF7_EBX = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
static const unsigned LEAF7_ECX = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
static const unsigned LEAF7_EDX = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
static const unsigned LEAF7_1_EAX = BIT(4) | BIT(5); /* AVX-VNNI, AVX512_BF16 */

static struct sigaction program_handler; /* what the program asked for SIGSEGV; ours stays installed */
static int masking;
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static void masked_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && sub == 0) {
        r[1] &= ~LEAF7_EBX;
        r[2] &= ~LEAF7_ECX;
        r[3] &= ~LEAF7_EDX;
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~LEAF7_1_EAX;
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    greg_t *reg = ((ucontext_t *)context)->uc_mcontext.gregs;
    /* a faulted CPUID arrives as SI_KERNEL (a general protection fault) with RIP on the instruction, 0F A2 */
    const unsigned char *ip = (const unsigned char *)reg[REG_RIP];
    if (info->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned r[4];
        masked_cpuid((unsigned)reg[REG_RAX], (unsigned)reg[REG_RCX], r);
        reg[REG_RAX] = r[0];
        reg[REG_RBX] = r[1];
        reg[REG_RCX] = r[2];
        reg[REG_RDX] = r[3];
        reg[REG_RIP] += 2;
        return;
    }
    if (program_handler.sa_flags & SA_SIGINFO) {
        program_handler.sa_sigaction(sig, info, context);
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(sig);
    } else { /* the default action: a fault repeats on return; a sent signal is sent again, to arrive on return */
        struct sigaction default_action;
        memset(&default_action, 0, sizeof default_action);
        default_action.sa_handler = SIG_DFL;
        real_sigaction(SIGSEGV, &default_action, NULL);
        if (info->si_code <= 0) /* SI_USER, SI_TKILL, SI_QUEUE: kill(), raise(), not a fault */
            raise(sig);
    }
}

/* The program's SIGSEGV handlers are recorded, not installed: ours must stay first. */
int sigaction(int signum, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction)
        real_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    if (signum != SIGSEGV || !masking) return real_sigaction(signum, act, old);
    if (old) *old = program_handler;
    if (act) program_handler = *act;
    return 0;
}

sighandler_t signal(int signum, sighandler_t handler) {
    static sighandler_t (*real)(int, sighandler_t);
    if (!real) real = (sighandler_t (*)(int, sighandler_t))dlsym(RTLD_NEXT, "signal");
    if (signum != SIGSEGV || !masking) return real(signum, handler);
    sighandler_t previous = (program_handler.sa_flags & SA_SIGINFO) ? SIG_DFL : program_handler.sa_handler;
    memset(&program_handler, 0, sizeof program_handler);
    program_handler.sa_handler = handler;
    return previous;
}

__attribute__((constructor)) static void hide(void) {
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_segv;
    ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    program_handler.sa_handler = SIG_DFL;
    if (sigaction(SIGSEGV, &ours, NULL) != 0 || syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "as_avx2: this kernel or CPU cannot fault on CPUID (arch_prctl ARCH_SET_CPUID failed), so "
                        "AVX-512 cannot be hidden here; measure on a real AVX2 machine instead\n");
        _exit(3);
    }
    masking = 1;
    setenv(HIDDEN_ENV, HIDDEN_FLAGS, 1);
}
