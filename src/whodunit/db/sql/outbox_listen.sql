-- outbox_listen.sql — a deliverer's connection waits for new rows on this channel.
LISTEN whodunit_outbox
