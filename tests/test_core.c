/*
 * test_core.c - status names and the per-thread error text.
 */
#include "core/error.h"
#include "test_util.h"

#include <pthread.h>

static void *other_thread(void *arg)
{
    (void)arg;
    dsv4_fail(DSV4_ERR_IO, "thread B");
    return NULL;
}

int main(void)
{
    CHECK(!strcmp(dsv4_status_name(DSV4_OK), "DSV4_OK"));
    CHECK(!strcmp(dsv4_status_name(DSV4_ERR_TENSOR_SHAPE), "DSV4_ERR_TENSOR_SHAPE"));
    CHECK(!strcmp(dsv4_status_name((dsv4_status)999), "DSV4_ERR_UNKNOWN"));
    CHECK(dsv4_fail(DSV4_ERR_FORMAT, "file %s: bad %d", "x.safetensors", 7) == DSV4_ERR_FORMAT);
    CHECK(!strcmp(dsv4_last_error(), "file x.safetensors: bad 7"));
    dsv4_fail_context(DSV4_ERR_FORMAT, "opening %s", "dir");
    CHECK(!strcmp(dsv4_last_error(), "opening dir: file x.safetensors: bad 7"));
    pthread_t t;
    pthread_create(&t, NULL, other_thread, NULL);
    pthread_join(t, NULL);
    CHECK(!strcmp(dsv4_last_error(), "opening dir: file x.safetensors: bad 7"));
    dsv4_clear_error();
    CHECK(dsv4_last_error()[0] == '\0');
    return test_finish();
}
