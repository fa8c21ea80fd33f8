/* SPDX-License-Identifier: LGPL-2.1-only */
/*
 * krunfw-mac self-test: loads a freshly linked libkrunfw the way libkrun
 * does (dlopen by path, look up the accessors) and checks what libkrun relies
 * on. Arguments are key=value pairs:
 *
 *   library=PATH abi=N load=ADDR entry=ADDR
 *   artifact=PATH offset=N length=N   the kernel bytes the bundle must start with
 *   dump=PATH                         write the whole kernel bundle there
 *   blob=NAME:PATH                    check krunfw_get_NAME (SEV: qboot, initrd)
 *
 * Prints one "ok ..." or "FAIL ..." line per check; exits 1 if any failed.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUNDLE_ALIGNMENT 65536u
#define MAX_BLOBS 4

typedef char *(*get_kernel_fn)(size_t *load_addr, size_t *entry_addr, size_t *size);
typedef int (*get_version_fn)(void);
typedef char *(*get_blob_fn)(size_t *size);

static int failures;

static void check(int passed, const char *what, unsigned long long got, unsigned long long expected)
{
	if (passed) {
		printf("ok %s\n", what);
	} else {
		printf("FAIL %s: got 0x%llx, expected 0x%llx\n", what, got, expected);
		failures++;
	}
}

static unsigned char *read_file(const char *path, size_t *length)
{
	FILE *file = fopen(path, "rb");
	unsigned char *data;
	long size;

	if (!file || fseek(file, 0, SEEK_END) != 0 || (size = ftell(file)) < 0 || fseek(file, 0, SEEK_SET) != 0) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(2);
	}
	data = malloc(size ? (size_t)size : 1);
	if (!data || fread(data, 1, (size_t)size, file) != (size_t)size) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(2);
	}
	fclose(file);
	*length = (size_t)size;
	return data;
}

/* dlsym returns void *; converting that to a function pointer needs a copy in ISO C. */
static void *lookup(void *library, const char *symbol)
{
	void *address = dlsym(library, symbol);

	if (!address) {
		printf("FAIL symbol %s not exported\n", symbol);
		failures++;
	}
	return address;
}

static void check_blob(void *library, const char *spec)
{
	char symbol[64];
	const char *colon = strchr(spec, ':');
	void *address;
	get_blob_fn get_blob;
	unsigned char *expected;
	size_t expected_length, size = 0, i;
	char *bytes;
	int zeros = 1;

	if (!colon || (size_t)(colon - spec) > 40) {
		fprintf(stderr, "invalid blob argument: %s\n", spec);
		exit(2);
	}
	snprintf(symbol, sizeof symbol, "krunfw_get_%.*s", (int)(colon - spec), spec);
	address = lookup(library, symbol);
	if (!address)
		return;
	memcpy(&get_blob, &address, sizeof get_blob);
	bytes = get_blob(&size);
	expected = read_file(colon + 1, &expected_length);
	printf("%s size %zu\n", symbol, size);
	check(((uintptr_t)bytes % BUNDLE_ALIGNMENT) == 0, "blob pointer 64 KiB aligned", (uintptr_t)bytes, 0);
	check(size % BUNDLE_ALIGNMENT == 0, "blob size multiple of 64 KiB", size, 0);
	check(size >= expected_length, "blob holds the whole file", size, expected_length);
	if (size >= expected_length) {
		check(memcmp(bytes, expected, expected_length) == 0, "blob bytes match the file", 0, 0);
		for (i = expected_length; i < size; i++)
			zeros &= bytes[i] == 0;
		check(zeros, "blob padding is zeros", 0, 0);
	}
	free(expected);
}

int main(int argc, char **argv)
{
	const char *library_path = NULL, *artifact_path = NULL, *dump_path = NULL;
	const char *blobs[MAX_BLOBS];
	unsigned long long abi = 0, load = 0, entry = 0, offset = 0, length = 0;
	int blob_count = 0, i;
	void *library, *address;
	get_version_fn get_version;
	get_kernel_fn get_kernel;
	size_t load_addr = 0, entry_addr = 0, size = 0;
	char *kernel;

	for (i = 1; i < argc; i++) {
		const char *argument = argv[i];
		if (!strncmp(argument, "library=", 8))
			library_path = argument + 8;
		else if (!strncmp(argument, "abi=", 4))
			abi = strtoull(argument + 4, NULL, 0);
		else if (!strncmp(argument, "load=", 5))
			load = strtoull(argument + 5, NULL, 0);
		else if (!strncmp(argument, "entry=", 6))
			entry = strtoull(argument + 6, NULL, 0);
		else if (!strncmp(argument, "artifact=", 9))
			artifact_path = argument + 9;
		else if (!strncmp(argument, "offset=", 7))
			offset = strtoull(argument + 7, NULL, 0);
		else if (!strncmp(argument, "length=", 7))
			length = strtoull(argument + 7, NULL, 0);
		else if (!strncmp(argument, "dump=", 5))
			dump_path = argument + 5;
		else if (!strncmp(argument, "blob=", 5) && blob_count < MAX_BLOBS)
			blobs[blob_count++] = argument + 5;
		else {
			fprintf(stderr, "unknown argument: %s\n", argument);
			return 2;
		}
	}
	if (!library_path || !artifact_path) {
		fprintf(stderr, "library= and artifact= are required\n");
		return 2;
	}

	library = dlopen(library_path, RTLD_NOW | RTLD_LOCAL);
	if (!library) {
		printf("FAIL dlopen: %s\n", dlerror());
		return 1;
	}

	address = lookup(library, "krunfw_get_version");
	if (address) {
		memcpy(&get_version, &address, sizeof get_version);
		check((unsigned long long)get_version() == abi, "krunfw_get_version", (unsigned long long)get_version(), abi);
	}

	address = lookup(library, "krunfw_get_kernel");
	if (address) {
		unsigned char *artifact;
		size_t artifact_length;

		memcpy(&get_kernel, &address, sizeof get_kernel);
		kernel = get_kernel(&load_addr, &entry_addr, &size);
		printf("kernel size %zu load 0x%zx entry 0x%zx\n", size, load_addr, entry_addr);
		check(((uintptr_t)kernel % BUNDLE_ALIGNMENT) == 0, "kernel pointer 64 KiB aligned", (uintptr_t)kernel, 0);
		check(size > 0 && size % BUNDLE_ALIGNMENT == 0, "kernel size multiple of 64 KiB", size, 0);
		check(load_addr == load, "load address", load_addr, load);
		check(entry_addr == entry, "entry address", entry_addr, entry);

		artifact = read_file(artifact_path, &artifact_length);
		if (offset + length > artifact_length || length > size) {
			printf("FAIL artifact range %llu+%llu outside the artifact (%zu bytes) or the bundle\n", offset, length, artifact_length);
			failures++;
		} else {
			check(memcmp(kernel, artifact + offset, length) == 0, "bundle starts with the kernel artifact's bytes", 0, 0);
		}
		free(artifact);

		if (dump_path) {
			FILE *dump = fopen(dump_path, "wb");
			if (!dump || fwrite(kernel, 1, size, dump) != size || fclose(dump) != 0) {
				fprintf(stderr, "cannot write %s\n", dump_path);
				return 2;
			}
		}
	}

	for (i = 0; i < blob_count; i++)
		check_blob(library, blobs[i]);

	return failures ? 1 : 0;
}
