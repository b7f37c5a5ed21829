#!/usr/bin/perl
# A small SMPP 3.4 SMSC written with Debian's Net::SMPP (libnet-smpp-perl), used by
# tests/diagnostics/test_smpp_link.py to try our SMPP client against an SMPP implementation
# this project did not write, with the awkward timings and answers of real SMSCs.
#
# Every submit_sm is answered (after --resp-delay s) with a message id, then (after
# --receipt-delay s) a delivery receipt, then (after --reply-delay s, if --reply is given)
# a mobile-originated SMS "from the handset" with the --reply text ("{text}" in it stands for
# the text received). Error injection:
#   --invalid NUMBER     answer ESME_RINVDSTADR (0x0b) for this destination (repeatable)
#   --throttle-every N   answer every Nth submit_sm with ESME_RTHROTTLED (0x58)
#   --queue-full-every N answer every Nth submit_sm with ESME_RMSGQFUL (0x14)
#   --mo-ton T           type of number of the MO's source address: 1 international
#                        ("584140000077"), 2 national ("04140000077", --country-code stripped,
#                        trunk prefix 0 added), 0 unknown (as international)
#   --enquire S          send enquire_link every S s (0: never)
#
# Prints one line per event on stdout (the test reads them):
#   LISTEN <port>
#   BIND <conn> <system_id> <status>
#   SUBMIT <conn> <seq> <dest_ton> <dest_npi> <dest> <data_coding> <status> <message_id> <hex of short_message>
#          <validity_period or ->
#   RECEIPT <conn> <message_id>           MO <conn> <source> <text>
#   DELIVER_RESP <conn> <seq> <status>    ENQUIRE <conn>    ENQUIRE_RESP <conn>
#   UNBIND <conn>                         CLOSE <conn>
use strict;
use warnings;
use Getopt::Long;
use IO::Select;
use Net::SMPP;
use POSIX qw(strftime);
use Time::HiRes qw(time);

$| = 1;
$SIG{PIPE} = 'IGNORE';  # a peer gone mid-write is seen by the next read
my %o = (host => '127.0.0.1', port => 0, system_id => 'avl', password => 'avl-secret',
         'resp-delay' => 0, 'receipt-delay' => 0, 'reply-delay' => 0, reply => '', invalid => [],
         'throttle-every' => 0, 'queue-full-every' => 0, 'mo-ton' => 1, 'country-code' => '58',
         enquire => 0, lifetime => 300);
GetOptions(\%o, 'host=s', 'port=i', 'system_id=s', 'password=s', 'resp-delay=f', 'receipt-delay=f',
           'reply-delay=f', 'reply=s', 'invalid=s@', 'throttle-every=i', 'queue-full-every=i', 'mo-ton=i',
           'country-code=s', 'enquire=f', 'lifetime=i') or die "bad options\n";
my %invalid = map { $_ => 1 } @{$o{invalid}};

$SIG{ALRM} = sub { print "LIFETIME\n"; exit 0 };  # never outlive a test that forgot us
alarm $o{lifetime};

my $listener = Net::SMPP->new_listen($o{host}, port => $o{port}, async => 1)
    or die "cannot listen on $o{host}:$o{port}: $!\n";
print "LISTEN " . $listener->sockport . "\n";

my $select = IO::Select->new($listener);
my (%conn_id, %bound, %last_enquire);
my @timers;             # [due, conn, code]: delayed responses, receipts, replies
my ($conns, $submits, $next_id) = (0, 0, 1000);

sub later { my ($delay, $conn, $code) = @_; push @timers, [time + $delay, $conn, $code] }

sub close_conn {
    my ($conn) = @_;
    print "CLOSE $conn_id{$conn}\n";
    $select->remove($conn);
    @timers = grep { $_->[1] != $conn } @timers;
    delete $bound{$conn}; delete $last_enquire{$conn}; delete $conn_id{$conn};
    close $conn;
}

sub national { my ($n) = @_; my $cc = $o{'country-code'}; $n =~ s/^\Q$cc\E/0/; return $n }

sub submit {
    my ($conn, $pdu) = @_;
    my $id = $conn_id{$conn};
    my $dest = $pdu->{destination_addr};
    $submits++;
    my $status = 0;
    if (!$bound{$conn}) { $status = 0x04 }
    elsif ($invalid{$dest}) { $status = 0x0b }
    elsif ($o{'throttle-every'} && $submits % $o{'throttle-every'} == 0) { $status = 0x58 }
    elsif ($o{'queue-full-every'} && $submits % $o{'queue-full-every'} == 0) { $status = 0x14 }
    my $message_id = $status ? '' : 'P' . $next_id++;
    printf "SUBMIT %d %d %d %d %s %d %d %s %s %s\n", $id, $pdu->{seq}, $pdu->{dest_addr_ton}, $pdu->{dest_addr_npi},
        $dest, $pdu->{data_coding}, $status, $message_id || '-', unpack('H*', $pdu->{short_message} // '') || '-',
        $pdu->{validity_period} || '-';
    my $seq = $pdu->{seq};
    my $submitted = strftime('%y%m%d%H%M', gmtime);
    later($o{'resp-delay'}, $conn, sub {
        $conn->submit_sm_resp(seq => $seq, status => $status, message_id => $message_id);
    });
    return if $status;
    my $registered = $pdu->{registered_delivery} & 0x01;
    my $text = substr($pdu->{short_message} // '', 0, 20);
    later($o{'resp-delay'} + $o{'receipt-delay'}, $conn, sub {
        my $done = strftime('%y%m%d%H%M', gmtime);
        $conn->deliver_sm(source_addr_ton => $pdu->{dest_addr_ton}, source_addr_npi => 1, source_addr => $dest,
                          dest_addr_ton => $pdu->{source_addr_ton}, dest_addr_npi => $pdu->{source_addr_npi},
                          destination_addr => $pdu->{source_addr}, esm_class => 0x04, data_coding => 0,
                          short_message => "id:$message_id sub:001 dlvr:001 submit date:$submitted "
                                           . "done date:$done stat:DELIVRD err:000 text:$text",
                          receipted_message_id => "$message_id\0", message_state => pack('C', 2));
        print "RECEIPT $id $message_id\n";
    }) if $registered;
    return if $o{reply} eq '';
    later($o{'resp-delay'} + $o{'reply-delay'}, $conn, sub {
        my $handset = $dest;
        $handset =~ s/^\+//;
        $handset = national($handset) if $o{'mo-ton'} == 2;
        (my $reply = $o{reply}) =~ s/\{text\}/$pdu->{short_message}/g;
        $conn->deliver_sm(source_addr_ton => $o{'mo-ton'}, source_addr_npi => 1, source_addr => $handset,
                          dest_addr_ton => $pdu->{source_addr_ton}, dest_addr_npi => $pdu->{source_addr_npi},
                          destination_addr => $pdu->{source_addr}, esm_class => 0, data_coding => 0,
                          short_message => $reply);
        print "MO $id $handset $reply\n";
    });
}

sub handle {
    my ($conn, $pdu) = @_;
    my $id = $conn_id{$conn};
    my $cmd = $pdu->{cmd};
    if ($cmd == Net::SMPP::CMD_bind_transceiver) {
        my $ok = $pdu->{system_id} eq $o{system_id} && $pdu->{password} eq substr($o{password}, 0, 8);
        my $status = $bound{$conn} ? 0x05 : $ok ? 0 : 0x0e;
        $conn->bind_transceiver_resp(seq => $pdu->{seq}, status => $status, system_id => 'PERLSMSC');
        print "BIND $id $pdu->{system_id} $status\n";
        $bound{$conn} = 1 if $status == 0;
    } elsif ($cmd == Net::SMPP::CMD_submit_sm) {
        submit($conn, $pdu);
    } elsif ($cmd == Net::SMPP::CMD_deliver_sm_resp) {
        print "DELIVER_RESP $id $pdu->{seq} $pdu->{status}\n";
    } elsif ($cmd == Net::SMPP::CMD_enquire_link) {
        $conn->enquire_link_resp(seq => $pdu->{seq});
        print "ENQUIRE $id\n";
    } elsif ($cmd == Net::SMPP::CMD_enquire_link_resp) {
        print "ENQUIRE_RESP $id\n";
    } elsif ($cmd == Net::SMPP::CMD_unbind) {
        $conn->unbind_resp(seq => $pdu->{seq});
        print "UNBIND $id\n";
        close_conn($conn);
    } else {
        printf "OTHER %d 0x%08x\n", $id, $cmd;
        $conn->generic_nack(seq => $pdu->{seq}, status => 0x03) unless $cmd & 0x80000000;
    }
}

while (1) {
    my $now = time;
    my @due = sort { $a->[0] <=> $b->[0] } grep { $_->[0] <= $now } @timers;
    @timers = grep { $_->[0] > $now } @timers;
    $_->[2]->() for @due;
    if ($o{enquire}) {
        for my $conn (grep { $bound{$_} } $select->handles) {
            next if defined $last_enquire{$conn} && $now - $last_enquire{$conn} < $o{enquire};
            $conn->enquire_link();
            $last_enquire{$conn} = $now;
        }
    }
    my ($next) = sort { $a <=> $b } map { $_->[0] } @timers;
    my $wait = defined $next ? ($next - time > 0.05 ? 0.05 : $next - time < 0 ? 0 : $next - time) : 0.05;
    for my $conn ($select->can_read($wait)) {
        if ($conn == $listener) {
            my $new = $listener->accept or next;
            $conn_id{$new} = ++$conns;
            $select->add($new);
            next;
        }
        my $pdu = $conn->read_pdu();
        if (!$pdu) { close_conn($conn); next }
        handle($conn, $pdu);
    }
}
