/* p11mk token layer: settings from the configuration that more than one
 * unit of the layer reads (the mechanism table, the attribute policy, the
 * access rules), set once when the token context opens. Kept apart so that
 * none of those units depends on another for them. */
#include "token/tok_policy.h"

#include <stdbool.h>

/* wrap_policy = strict (tok_policy.c and tok_access.c say what it does). */
static bool wrap_strict;

void tok_policy_set_wrap_strict(bool strict) { __atomic_store_n(&wrap_strict, strict, __ATOMIC_RELAXED); }
bool tok_policy_wrap_strict(void) { return __atomic_load_n(&wrap_strict, __ATOMIC_RELAXED); }
