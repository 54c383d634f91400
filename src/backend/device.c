/*
 * device.c - run-time choice between the CPU and CUDA backends.
 */
#include "backend/device.h"
#include "core/error.h"

#include <stdio.h>
#include <unistd.h>

#ifndef DSV4_HAVE_CUDA
int dsv4_cuda_device_count(void)
{
    return 0;
}

dsv4_status dsv4_cuda_device_describe(int device, char *name, size_t name_size)
{
    (void)device;
    if (name && name_size) name[0] = '\0';
    return dsv4_fail(DSV4_ERR_DEVICE, "this build of dsv4 has no CUDA backend "
                                      "(configure with -DDSV4_CUDA=ON where nvcc is installed)");
}
#endif

static void describe_cpu(char *name, size_t name_size)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (name && name_size) snprintf(name, name_size, "CPU (%ld threads)", n > 0 ? n : 1);
}

dsv4_status dsv4_device_resolve(dsv4_device_kind wanted, dsv4_device_kind *resolved, char *name,
                                size_t name_size)
{
    dsv4_clear_error();
    if (!resolved)
        return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "dsv4_device_resolve: resolved is NULL");
    switch (wanted) {
    case DSV4_DEVICE_CPU:
        *resolved = DSV4_DEVICE_CPU;
        describe_cpu(name, name_size);
        return DSV4_OK;
    case DSV4_DEVICE_CUDA:
        if (dsv4_cuda_device_count() <= 0) {
#ifdef DSV4_HAVE_CUDA
            return dsv4_fail_context(DSV4_ERR_DEVICE, "--device cuda: no usable GPU");
#else
            return dsv4_cuda_device_describe(0, name, name_size);
#endif
        }
        *resolved = DSV4_DEVICE_CUDA;
        return dsv4_cuda_device_describe(0, name, name_size);
    case DSV4_DEVICE_AUTO:
        if (dsv4_cuda_device_count() > 0) {
            *resolved = DSV4_DEVICE_CUDA;
            return dsv4_cuda_device_describe(0, name, name_size);
        }
        dsv4_clear_error();
        *resolved = DSV4_DEVICE_CPU;
        describe_cpu(name, name_size);
        return DSV4_OK;
    }
    return dsv4_fail(DSV4_ERR_INVALID_ARGUMENT, "unknown device kind %d", (int)wanted);
}
