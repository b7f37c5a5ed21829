#!/usr/bin/perl
# A small SMPP 3.4 ESME written with Debian's Net::SMPP (libnet-smpp-perl), used by
# tests/simulators/test_smsc.py to show the SMSC simulator interoperates with an SMPP
# implementation this project did not write. Prints one line per event on stdout:
#
#   BIND <status>                          bind_transceiver_resp status (decimal)
#   SUBMIT <status> <message_id>           submit_sm_resp
#   RECEIPT <receipted_message_id> <message_state> <text>
#   DELIVER <source_addr> <destination_addr> <esm_class> <text>
#   UNBIND <status>
#
# Modes:
#   sender   bind, submit one MT (registered_delivery=1), then wait for --expect deliver_sms
#            (receipts and MO replies), acknowledging each, then unbind.
#   gateway  bind with --range (the handset gateway), answer --expect deliver_sms with
#            --answer status, reply from each handset with an MO "--reply" text, then unbind.
use strict;
use warnings;
use Getopt::Long;
use Net::SMPP;

$| = 1;
my %o = (host => '127.0.0.1', port => 2775, system_id => 'avl', password => 'avl-secret',
         mode => 'sender', from => '', to => '', text => 'hello from perl', range => '',
         expect => 1, answer => 0, reply => '', timeout => 20);
GetOptions(\%o, 'host=s', 'port=i', 'system_id=s', 'password=s', 'mode=s', 'from=s', 'to=s',
           'text=s', 'range=s', 'expect=i', 'answer=i', 'reply=s', 'timeout=i') or die "bad options\n";

$SIG{ALRM} = sub { print "TIMEOUT\n"; exit 3 };
alarm $o{timeout};

my ($smpp, $resp) = Net::SMPP->new_transceiver($o{host}, port => $o{port}, system_id => $o{system_id},
                                               password => $o{password}, address_range => $o{range},
                                               async => 1);
die "connect failed: $!\n" unless $smpp;
# new_transceiver in async mode returns the bind's sequence number; read the response.
$resp = $smpp->wait_pdu(Net::SMPP::CMD_bind_transceiver_resp, $resp) unless ref $resp;
die "no bind response\n" unless $resp;
print "BIND $resp->{status}\n";
exit 0 if $resp->{status} != 0;

my @replies;    # [to, from] pairs the gateway must answer with an MO
if ($o{mode} eq 'sender') {
    my $seq = $smpp->submit_sm(source_addr => $o{from}, destination_addr => $o{to},
                               short_message => $o{text}, registered_delivery => 1);
    my $r = $smpp->wait_pdu(Net::SMPP::CMD_submit_sm_resp, $seq) or die "no submit_sm_resp\n";
    print "SUBMIT $r->{status} " . ($r->{message_id} // '') . "\n";
    exit 0 if $r->{status} != 0;
}
elsif ($o{mode} eq 'gateway') {
    print "READY\n";
}
else { die "unknown mode $o{mode}\n" }

my $seen = 0;
while ($seen < $o{expect}) {
    my $pdu = $smpp->read_pdu() or die "connection lost\n";
    if ($pdu->{cmd} == Net::SMPP::CMD_enquire_link) {
        $smpp->enquire_link_resp(seq => $pdu->{seq});
        next;
    }
    if ($pdu->{cmd} != Net::SMPP::CMD_deliver_sm) {
        printf "OTHER 0x%08x %d\n", $pdu->{cmd}, $pdu->{status};
        next;
    }
    $seen++;
    my $text = $pdu->{short_message} // '';
    $text = $pdu->{message_payload} if $text eq '' && defined $pdu->{message_payload};
    if ($pdu->{esm_class} & 0x04) {
        my $rid = $pdu->{receipted_message_id} // '';
        $rid =~ s/\0+$//;
        my $state = defined $pdu->{message_state} ? unpack('C', $pdu->{message_state}) : -1;
        print "RECEIPT $rid $state $text\n";
        $smpp->deliver_sm_resp(seq => $pdu->{seq}, message_id => '');
    } else {
        print "DELIVER $pdu->{source_addr} $pdu->{destination_addr} $pdu->{esm_class} $text\n";
        $smpp->deliver_sm_resp(seq => $pdu->{seq}, message_id => '', status => $o{answer});
        push @replies, [$pdu->{source_addr}, $pdu->{destination_addr}] if $o{mode} eq 'gateway' && $o{reply} ne '';
    }
}

for my $pair (@replies) {
    my ($to, $from) = @$pair;
    my $seq = $smpp->submit_sm(source_addr => $from, destination_addr => $to, short_message => $o{reply});
    my $r = $smpp->wait_pdu(Net::SMPP::CMD_submit_sm_resp, $seq) or die "no submit_sm_resp\n";
    print "SUBMIT $r->{status} " . ($r->{message_id} // '') . "\n";
}

my $seq = $smpp->unbind();
my $u = $smpp->wait_pdu(Net::SMPP::CMD_unbind_resp, $seq);
print "UNBIND " . ($u ? $u->{status} : 'none') . "\n";
exit 0;
