// SPDX-License-Identifier: LGPL-2.1-only
/*
 * The /init of the boot test's root disk: it writes one line to standard
 * output (the console the kernel opened for init) and exits with status 0.
 *
 * It is freestanding (no libc, no startup files) so that it builds with a
 * bare cross compiler: gcc -nostdlib -static -ffreestanding. The line comes
 * from init-marker.h, which defines INIT_MARKER as a brace-enclosed byte
 * list (the marker followed by '\n'); makeRootDisk in boot.ts writes it.
 */

#include "init-marker.h"

static const char marker[] = INIT_MARKER;

#if defined(__x86_64__)

#define SYSCALL_WRITE 1
#define SYSCALL_EXIT_GROUP 231

static long syscall3(long number, long arg0, long arg1, long arg2)
{
	long result;

	__asm__ volatile("syscall"
			 : "=a"(result)
			 : "a"(number), "D"(arg0), "S"(arg1), "d"(arg2)
			 : "rcx", "r11", "memory");
	return result;
}

#elif defined(__aarch64__)

#define SYSCALL_WRITE 64
#define SYSCALL_EXIT_GROUP 94

static long syscall3(long number, long arg0, long arg1, long arg2)
{
	register long x8 __asm__("x8") = number;
	register long x0 __asm__("x0") = arg0;
	register long x1 __asm__("x1") = arg1;
	register long x2 __asm__("x2") = arg2;

	__asm__ volatile("svc #0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2)
			 : "memory");
	return x0;
}

#else
#error "init.c supports x86_64 and aarch64 only"
#endif

void _start(void) __attribute__((noreturn));

void _start(void)
{
	unsigned long written = 0;

	/* The console may accept a line in several parts. */
	while (written < sizeof(marker)) {
		long result = syscall3(SYSCALL_WRITE, 1, (long)(marker + written),
				       (long)(sizeof(marker) - written));
		if (result <= 0)
			break;
		written += (unsigned long)result;
	}

	syscall3(SYSCALL_EXIT_GROUP, 0, 0, 0);
	for (;;) {
	}
}
