/* SPDX-License-Identifier: Apache-2.0 */
/*
 * target_main.c — ferry_test_target: the target engine process that the
 * multi-process tests start (see child_target_start in testutil.c).
 *   ferry_test_target CONTROL_FD LEN LOCATION SEED
 * FERRY_TEST_NOFILE=N lowers its RLIMIT_NOFILE to N first (tests of running
 * out of descriptors).  It knows the test-only "fault" transport too.
 */
#include <stdlib.h>
#include <sys/resource.h>

#include "fault_transport.h"
#include "testutil.h"

int main(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    const char *nofile = getenv("FERRY_TEST_NOFILE");
    if (nofile) {
        struct rlimit rl = {strtoull(nofile, NULL, 0), strtoull(nofile, NULL, 0)};
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            return 3;
    }
    fault_transport_register(); /* FERRY_PROTOCOLS=fault: the conformance suite's wrapper */
    child_target_serve(atoi(argv[1]), strtoull(argv[2], NULL, 0), argv[3], strtoull(argv[4], NULL, 0));
}
