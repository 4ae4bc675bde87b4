#!/usr/bin/env bash
# broker-top.sh [SECONDS]: which processes of the local RabbitMQ (on 5672)
# did the work. Samples every Erlang process's reductions for SECONDS
# (default 3), then prints the broker's CPU time in that window (Erlang's
# runtime, without the kernel's time for its syscalls) and the five
# processes with the largest share of the reductions, named by the module
# that started them (rabbit_prequeue: a queue; rabbit_channel; rabbit_reader:
# a connection's socket reader). Run it while a benchmark case runs
# (BENCHMARKS.md, "Issue 13's 1 KiB misses").
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" # rabbitmqctl, for a user without sbin
secs="${1:-3}"
[[ "$secs" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }
exec rabbitmqctl eval "
Snap = fun() -> maps:from_list([{P, R} || P <- erlang:processes(), {reductions, R} <- [erlang:process_info(P, reductions)]]) end,
Name = fun(P) -> try element(1, proc_lib:translate_initial_call(P)) catch _:_ -> exited end end,
A = Snap(), {_, _} = erlang:statistics(runtime), timer:sleep($secs * 1000), B = Snap(), {_, RT} = erlang:statistics(runtime),
D = lists:reverse(lists:keysort(2, [{P, R - maps:get(P, A, 0)} || {P, R} <- maps:to_list(B)])),
Tot = max(1, lists:sum([R || {_, R} <- D])),
io:format(\"broker CPU ~.2f cores over ${secs} s; reductions by process:~n\", [RT / ($secs * 1000)]),
[io:format(\"  ~3w %  ~s~n\", [R * 100 div Tot, Name(P)]) || {P, R} <- lists:sublist(D, 5)],
ok."
