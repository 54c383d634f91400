/*
 * device.cu - CUDA device discovery for the run-time backend choice (see backend/device.h).
 */
#include "backend/cuda/check.cuh"

#include <stdio.h>

extern "C" {
#include "backend/device.h"
}

extern "C" int dsv4_cuda_device_count(void)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        dsv4_fail(DSV4_ERR_DEVICE, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
        cudaGetLastError(); /* clear the sticky error so a later probe starts clean */
        return 0;
    }
    return n;
}

extern "C" dsv4_status dsv4_cuda_device_describe(int device, char *name, size_t name_size)
{
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    if (name && name_size)
        snprintf(name, name_size, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                 (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return DSV4_OK;
}
