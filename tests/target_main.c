/*
 * target_main.c — ferry_test_target: the target engine process that the
 * multi-process tests start (see child_target_start in testutil.c).
 *   ferry_test_target CONTROL_FD LEN LOCATION SEED
 */
#include <stdlib.h>

#include "testutil.h"

int main(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    child_target_serve(atoi(argv[1]), strtoull(argv[2], NULL, 0), argv[3], strtoull(argv[4], NULL, 0));
}
