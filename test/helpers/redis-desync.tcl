# redis's own "Protocol desync regression test" (tests/unit/protocol.tcl, redis 7.0), run
# `rounds` times over its three sequences against host:port. A round writes garbage until
# the server's reset makes a write fail, then reads the one reply line the server sent
# before it closed. Prints how many exchanges got the "Protocol error" reply, and how many
# did not, as JSON.
#
# redis's test writes the word `payload` (7 bytes, no newline) per flush until the server's
# 64 KiB limit on an unterminated request makes it answer and close: ~9,400 writes per
# exchange. The same bytes go here 146 words (1,022 bytes) per flush, which keeps the client
# writing when the reset comes at a fraction of the cost on a loaded machine.
lassign $argv host port rounds
set chunk [string repeat payload 146]
set got 0
set lost 0
set lostReplies {}
for {set round 0} {$round < $rounds} {incr round} {
    foreach seq [list "\x00" "*\x00" "$\x00"] {
        set s [socket $host $port]
        puts -nonewline $s $seq
        set test_start [clock seconds]
        set test_time_limit 30
        set retval ""
        while 1 {
            if {[catch {
                puts -nonewline $s $chunk
                flush $s
            }]} {
                catch {set retval [gets $s]}
                catch {close $s}
                break
            } else {
                set elapsed [expr {[clock seconds]-$test_start}]
                if {$elapsed > $test_time_limit} {
                    catch {close $s}
                    set retval "timeout: the server did not close"
                    break
                }
            }
        }
        if {[string match {*Protocol error*} $retval]} {
            incr got
        } else {
            incr lost
            if {[llength $lostReplies] < 5} { lappend lostReplies $retval }
        }
    }
}
puts "{\"got\": $got, \"lost\": $lost, \"sample\": \"[string map {\" ' \\ /} [join $lostReplies |]]\"}"
