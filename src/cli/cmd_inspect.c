/*
 * cmd_inspect.c - `dsv4 inspect MODEL_DIR` (placeholder until the loader lands).
 */
#include "commands.h"

int cmd_inspect(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return 2;
}
