/*
 * ksm-merger: a host process outside libvirt that hands memory to KSM, for
 * the attribution tests (tests/realstack/attribution.sh and ksm-sums.sh).
 *
 * Usage: ksm-merger MIB PATTERN [madvise|prctl]
 *
 *   MIB      how much anonymous memory to fill and offer to KSM
 *   PATTERN  same:SEED  every page holds the same bytes (KSM merges them
 *                       with each other, inside this one process)
 *            seq:SEED   page i holds bytes of (SEED, i): all different, but
 *                       page i of every process given the same SEED is the
 *                       same, so KSM merges across processes, two and more
 *                       mappers per KSM page
 *            random     bytes from /dev/urandom: nothing to merge
 *            zero       zero bytes (KSM maps the shared zero page in their
 *                       place when use_zero_pages is 1)
 *   madvise  madvise(MADV_MERGEABLE) on the area (default)
 *   prctl    prctl(PR_SET_MEMORY_MERGE, 1) for the whole process (Linux 6.4+)
 *
 * It prints "KB-MERGER-READY <pid> <pages>" on stdout once the memory is
 * filled and offered, then sleeps until a signal ends it. Built at test time
 * by the scripts that use it (cc -O2).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

/* splitmix64: a cheap, well-mixed stream, so no two (seed, page, word)
 * give the same 8 bytes by accident. */
static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static void usage(void)
{
	fprintf(stderr, "usage: ksm-merger MIB same:SEED|seq:SEED|random|zero [madvise|prctl]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 3 || argc > 4)
		usage();
	char *end;
	long mib = strtol(argv[1], &end, 10);
	if (*end || mib <= 0 || mib > 4096)
		usage();
	const char *pattern = argv[2];
	const char *how = argc == 4 ? argv[3] : "madvise";
	int same = strncmp(pattern, "same:", 5) == 0;
	int seq = strncmp(pattern, "seq:", 4) == 0;
	int random = strcmp(pattern, "random") == 0;
	int zero = strcmp(pattern, "zero") == 0;
	if (!same && !seq && !random && !zero)
		usage();
	uint64_t seed = (random || zero) ? 0 : strtoull(strchr(pattern, ':') + 1, NULL, 10);
	int use_prctl = strcmp(how, "prctl") == 0;
	if (!use_prctl && strcmp(how, "madvise") != 0)
		usage();

	long page = sysconf(_SC_PAGESIZE);
	size_t len = (size_t)mib << 20;
	size_t pages = len / (size_t)page;

	/* prctl before the mapping: it applies to every mergeable area the
	 * process has and will have. */
	if (use_prctl && prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0) {
		fprintf(stderr, "ksm-merger: prctl(PR_SET_MEMORY_MERGE): %s\n", strerror(errno));
		return 1;
	}
	unsigned char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		fprintf(stderr, "ksm-merger: mmap %ld MiB: %s\n", mib, strerror(errno));
		return 1;
	}
	/* No transparent huge pages: KSM splits them anyway, and small pages
	 * keep the counts exact from the first scan. */
	madvise(mem, len, MADV_NOHUGEPAGE);

	if (zero) {
		/* Written, not just mapped: an untouched page is no page. */
		for (size_t p = 0; p < pages; p++)
			mem[p * (size_t)page] = 1;
		memset(mem, 0, len);
	} else if (random) {
		int fd = open("/dev/urandom", O_RDONLY);
		if (fd < 0) {
			perror("ksm-merger: /dev/urandom");
			return 1;
		}
		size_t got = 0;
		while (got < len) {
			ssize_t n = read(fd, mem + got, len - got);
			if (n <= 0) {
				perror("ksm-merger: read /dev/urandom");
				return 1;
			}
			got += (size_t)n;
		}
		close(fd);
	} else {
		for (size_t p = 0; p < pages; p++) {
			uint64_t *w = (uint64_t *)(mem + p * (size_t)page);
			uint64_t base = mix(seed ^ (same ? 0 : mix(p + 1)));
			for (size_t i = 0; i < (size_t)page / 8; i++)
				w[i] = mix(base + i);
		}
	}

	if (!use_prctl && madvise(mem, len, MADV_MERGEABLE) != 0) {
		fprintf(stderr, "ksm-merger: madvise(MADV_MERGEABLE): %s\n", strerror(errno));
		return 1;
	}
	printf("KB-MERGER-READY %d %zu\n", (int)getpid(), pages);
	fflush(stdout);
	for (;;)
		pause();
}
