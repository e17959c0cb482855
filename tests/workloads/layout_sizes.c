/*
 * Prints the size and field offsets of each struct in bpf/profile.h, one
 * "struct field offset" line each, for tests/ebpf/test_layout.py.
 */
#include <linux/types.h>
#include <stddef.h>
#include <stdio.h>
#include "profile.h"

#define SIZE(s) printf(#s " sizeof %zu\n", sizeof(struct s))
#define FIELD(s, f) printf(#s " " #f " %zu\n", offsetof(struct s, f))

int main(void)
{
	SIZE(profile_config);
	FIELD(profile_config, discover_new);
	FIELD(profile_config, collect_user);
	FIELD(profile_config, collect_kernel);
	SIZE(pid_config);
	FIELD(pid_config, state);
	FIELD(pid_config, collect_user);
	FIELD(pid_config, collect_kernel);
	SIZE(sample_key);
	FIELD(sample_key, pid);
	FIELD(sample_key, user_stack);
	FIELD(sample_key, kernel_stack);
	SIZE(stack_trace);
	FIELD(stack_trace, ips);
	SIZE(pid_event);
	FIELD(pid_event, type);
	FIELD(pid_event, pid);
	FIELD(pid_event, ppid);
	SIZE(control);
	FIELD(control, active_buffer);
	printf("enum PID_STATE_PENDING %d\nenum PID_STATE_PROFILE %d\nenum PID_STATE_IGNORE %d\n",
	       PID_STATE_PENDING, PID_STATE_PROFILE, PID_STATE_IGNORE);
	printf("enum DROP_USER_STACK_MISSING %d\nenum DROP_STACKS_MAP_FULL %d\n"
	       "enum DROP_COUNTS_MAP_FULL %d\nenum DROP_PID_MAP_FULL %d\nenum DROP_EVENTS_FULL %d\n",
	       DROP_USER_STACK_MISSING, DROP_STACKS_MAP_FULL, DROP_COUNTS_MAP_FULL,
	       DROP_PID_MAP_FULL, DROP_EVENTS_FULL);
	printf("enum PID_EVENT_NEW %d\nenum PID_EVENT_EXEC %d\nenum PID_EVENT_EXIT %d\n",
	       PID_EVENT_NEW, PID_EVENT_EXEC, PID_EVENT_EXIT);
	return 0;
}
