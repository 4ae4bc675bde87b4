#!/usr/bin/env bash
# broker-top.sh [SECONDS]: which processes of the local RabbitMQ (on 5672)
# did the work. Samples every Erlang process's reductions for SECONDS
# (default 3), then prints
#   - the broker's CPU in that window: Erlang's runtime, and the OS
#     process's user and system time from /proc/self/stat (the kernel's work
#     for the broker, socket reads and writes and fsync, is only in the
#     latter);
#   - the five processes with the largest share of the reductions, with
#     their reductions per second (divided by a case's msg/s: what each
#     message cost that process), named by the module that started them
#     (rabbit_prequeue: a queue; rabbit_channel; rabbit_reader: a
#     connection's socket reader).
# Run it while a benchmark case runs (BENCHMARKS.md, "Issue 13's 1 KiB
# misses").
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" # rabbitmqctl, for a user without sbin
secs="${1:-3}"
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
exec rabbitmqctl eval "
Ticks = fun() -> try {ok, S} = file:read_file(\"/proc/self/stat\"), [_, Rest] = string:split(S, \") \", trailing), F = string:lexemes(Rest, \" \"), {binary_to_integer(lists:nth(12, F)), binary_to_integer(lists:nth(13, F))} catch _:_ -> none end end,
Snap = fun() -> maps:from_list([{P, R} || P <- erlang:processes(), {reductions, R} <- [erlang:process_info(P, reductions)]]) end,
Name = fun(P) -> try element(1, proc_lib:translate_initial_call(P)) catch _:_ -> exited end end,
A = Snap(), T0 = Ticks(), {_, _} = erlang:statistics(runtime), timer:sleep($secs * 1000), B = Snap(), {_, RT} = erlang:statistics(runtime), T1 = Ticks(),
D = lists:reverse(lists:keysort(2, [{P, R - maps:get(P, A, 0)} || {P, R} <- maps:to_list(B)])),
Tot = max(1, lists:sum([R || {_, R} <- D])),
io:format(\"broker CPU ~.2f cores over ${secs} s; reductions by process:~n\", [RT / ($secs * 1000)]),
[io:format(\"  ~3w %  ~10w/s  ~s~n\", [R * 100 div Tot, R div $secs, Name(P)]) || {P, R} <- lists:sublist(D, 5)],
Hz = try list_to_integer(string:trim(os:cmd(\"getconf CLK_TCK\"))) catch _:_ -> 100 end,
case {T0, T1} of
  {{U0, S0}, {U1, S1}} -> io:format(\"OS process: user ~.2f cores, system ~.2f cores~n\", [(U1 - U0) / Hz / $secs, (S1 - S0) / Hz / $secs]);
  _ -> io:format(\"OS process: no /proc/self/stat (not Linux)~n\")
end,
ok."
