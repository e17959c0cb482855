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
	FIELD(profile_config, python_enabled);
	FIELD(profile_config, native_enabled);
	SIZE(pid_config);
	FIELD(pid_config, state);
	FIELD(pid_config, collect_user);
	FIELD(pid_config, collect_kernel);
	FIELD(pid_config, python);
	FIELD(pid_config, native);
	FIELD(pid_config, mappings_asked);
	SIZE(sample_key);
	FIELD(sample_key, pid);
	FIELD(sample_key, gil);
	FIELD(sample_key, user_stack);
	FIELD(sample_key, kernel_stack);
	FIELD(sample_key, python_stack);
	SIZE(py_offsets);
	FIELD(py_offsets, tstate_frame);
	FIELD(py_offsets, frame_window);
	FIELD(py_offsets, code_linetable);
	FIELD(py_offsets, code_window);
	FIELD(py_offsets, unicode_compact_data);
	FIELD(py_offsets, gil_last_holder);
	FIELD(py_offsets, gil_locked);
	FIELD(py_offsets, owner_cstack);
	FIELD(py_offsets, entry_every_frame);
	SIZE(py_proc);
	FIELD(py_proc, code_type);
	FIELD(py_proc, gil);
	FIELD(py_proc, tss_key);
	FIELD(py_proc, tsd_base);
	FIELD(py_proc, tsd_stride);
	FIELD(py_proc, tsd_data);
	FIELD(py_proc, offsets);
	SIZE(py_frame);
	FIELD(py_frame, code);
	FIELD(py_frame, first_line);
	FIELD(py_frame, lasti);
	SIZE(py_stack);
	FIELD(py_stack, depth);
	FIELD(py_stack, flags);
	FIELD(py_stack, frames);
	FIELD(py_stack, frame_flags);
	SIZE(py_symbol_key);
	FIELD(py_symbol_key, pid);
	FIELD(py_symbol_key, first_line);
	FIELD(py_symbol_key, code);
	SIZE(py_symbol);
	FIELD(py_symbol, name_len);
	FIELD(py_symbol, file_len);
	FIELD(py_symbol, name_kind);
	FIELD(py_symbol, file_kind);
	FIELD(py_symbol, name_truncated);
	FIELD(py_symbol, file_truncated);
	FIELD(py_symbol, name);
	FIELD(py_symbol, file);
	SIZE(py_code_lines);
	FIELD(py_code_lines, pid);
	FIELD(py_code_lines, first_line);
	FIELD(py_code_lines, code);
	FIELD(py_code_lines, table_len);
	FIELD(py_code_lines, copied);
	FIELD(py_code_lines, table);
	SIZE(stack_trace);
	FIELD(stack_trace, ips);
	SIZE(pid_event);
	FIELD(pid_event, type);
	FIELD(pid_event, pid);
	FIELD(pid_event, ppid);
	FIELD(pid_event, cgroup_id);
	FIELD(pid_event, comm);
	FIELD(pid_event, cgroup_name);
	SIZE(unwind_row);
	FIELD(unwind_row, pc);
	FIELD(unwind_row, cfa_type);
	FIELD(unwind_row, rbp_offset);
	FIELD(unwind_row, cfa_offset);
	SIZE(unwind_mapping_key);
	FIELD(unwind_mapping_key, prefixlen);
	FIELD(unwind_mapping_key, pid);
	FIELD(unwind_mapping_key, address);
	SIZE(unwind_mapping);
	FIELD(unwind_mapping, start);
	FIELD(unwind_mapping, end);
	FIELD(unwind_mapping, bias);
	FIELD(unwind_mapping, table_start);
	FIELD(unwind_mapping, table_rows);
	SIZE(control);
	FIELD(control, active_buffer);
	printf("enum PID_STATE_PENDING %d\nenum PID_STATE_PROFILE %d\nenum PID_STATE_IGNORE %d\n",
	       PID_STATE_PENDING, PID_STATE_PROFILE, PID_STATE_IGNORE);
	printf("enum DROP_USER_STACK_MISSING %d\nenum DROP_STACKS_MAP_FULL %d\n"
	       "enum DROP_COUNTS_MAP_FULL %d\nenum DROP_PID_MAP_FULL %d\nenum DROP_EVENTS_FULL %d\n"
	       "enum DROP_PY_STACKS_MAP_FULL %d\nenum DROP_PY_READ_FAILED %d\n"
	       "enum DROP_UNWIND_FAILED %d\nenum DROP_USER_STACK_UNREADABLE %d\n",
	       DROP_USER_STACK_MISSING, DROP_STACKS_MAP_FULL, DROP_COUNTS_MAP_FULL,
	       DROP_PID_MAP_FULL, DROP_EVENTS_FULL, DROP_PY_STACKS_MAP_FULL, DROP_PY_READ_FAILED,
	       DROP_UNWIND_FAILED, DROP_USER_STACK_UNREADABLE);
	printf("enum UNWIND_FRAMES_TABLE %d\nenum UNWIND_FRAMES_FP %d\n"
	       "enum UNWIND_END_OUTERMOST %d\nenum UNWIND_END_FP_CHAIN %d\n"
	       "enum UNWIND_END_NO_MAPPING %d\nenum UNWIND_END_NO_ROW %d\n"
	       "enum UNWIND_END_UNSUPPORTED %d\nenum UNWIND_END_READ_FAULT %d\n"
	       "enum UNWIND_END_DEPTH %d\nenum UNWIND_END_WAITING %d\n",
	       UNWIND_FRAMES_TABLE, UNWIND_FRAMES_FP, UNWIND_END_OUTERMOST, UNWIND_END_FP_CHAIN,
	       UNWIND_END_NO_MAPPING, UNWIND_END_NO_ROW, UNWIND_END_UNSUPPORTED,
	       UNWIND_END_READ_FAULT, UNWIND_END_DEPTH, UNWIND_END_WAITING);
	printf("enum NATIVE_WAITING %d\nenum NATIVE_TABLES %d\nenum NATIVE_FRAME_POINTERS %d\n",
	       NATIVE_WAITING, NATIVE_TABLES, NATIVE_FRAME_POINTERS);
	printf("enum PY_STAT_SAMPLES %d\nenum PY_STAT_NO_THREAD_STATE %d\n"
	       "enum PY_STAT_TRUNCATED %d\nenum PY_STAT_SYMBOLS_NEW %d\n"
	       "enum PY_STAT_LINES_LOST %d\n",
	       PY_STAT_SAMPLES, PY_STAT_NO_THREAD_STATE, PY_STAT_TRUNCATED, PY_STAT_SYMBOLS_NEW,
	       PY_STAT_LINES_LOST);
	printf("enum PID_EVENT_NEW %d\nenum PID_EVENT_EXEC %d\nenum PID_EVENT_EXIT %d\n"
	       "enum PID_EVENT_MAPPINGS %d\n",
	       PID_EVENT_NEW, PID_EVENT_EXEC, PID_EVENT_EXIT, PID_EVENT_MAPPINGS);
	printf("enum PY_GIL_UNKNOWN %d\nenum PY_GIL_HELD %d\nenum PY_GIL_RELEASED %d\n",
	       PY_GIL_UNKNOWN, PY_GIL_HELD, PY_GIL_RELEASED);
	return 0;
}
