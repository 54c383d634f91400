/*
 * cmd_device.c - `dsv4 device`: prints which device a run would use (and why).
 */
#include "commands.h"

#include <stdio.h>
#include <string.h>

int cmd_device(int argc, char **argv)
{
    dsv4_device_kind want = DSV4_DEVICE_AUTO;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "auto"))
                want = DSV4_DEVICE_AUTO;
            else if (!strcmp(v, "cpu"))
                want = DSV4_DEVICE_CPU;
            else if (!strcmp(v, "cuda"))
                want = DSV4_DEVICE_CUDA;
            else {
                fprintf(stderr, "dsv4 device: --device must be auto, cpu or cuda (got '%s')\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: dsv4 device [--device auto|cpu|cuda]\n");
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    dsv4_device_kind got;
    char name[256];
    dsv4_status st = dsv4_device_resolve(want, &got, name, sizeof name);
    if (st != DSV4_OK) return cli_report("device", st);
    printf("%s: %s\n", got == DSV4_DEVICE_CUDA ? "cuda" : "cpu", name);
    return 0;
}
