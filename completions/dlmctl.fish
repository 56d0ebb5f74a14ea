# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_dlmctl_global_optspecs
    string join \n socket= no-autostart h/help V/version
end

function __fish_dlmctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_dlmctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_dlmctl_using_subcommand
    set -l cmd (__fish_dlmctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c dlmctl -n "__fish_dlmctl_needs_command" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_needs_command" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -s V -l version -d 'Print version'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "lock" -d 'Take a lock: run COMMAND under it, or keep it as a persistent lock and print its id'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "unlock" -d 'Release a persistent lock, or break a command\'s lock (root)'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "join" -d 'Join a domain (the node stays in it until `dlmctl leave`)'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "leave" -d 'Leave a domain, releasing every lock and value block in it'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "lvb" -d 'Read or write a lock value block'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "domains" -d 'List the domains this node is in'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "locks" -d 'List resources and their locks'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "status" -d 'Show lockd\'s status'
complete -c dlmctl -n "__fish_dlmctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -l mode -d 'Any mode: NL, CR, CW, PR, PW or EX' -r
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -s w -l timeout -d 'Give up after SECS seconds (fractions allowed; 0 means --try)' -r
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -s E -l conflict-exit-code -d 'Exit status when busy or timed out' -r
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -l kill-after -d 'If the lock is lost, SIGKILL COMMAND this long after SIGTERM (at most lockd\'s fence grace less one second when the node fenced itself)' -r
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -l id -d 'Convert persistent lock N to the mode instead of taking a new lock' -r
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -s x -l ex -d 'Exclusive mode (the default)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -s s -l pr -d 'Protected read (shared) mode'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -s n -l try -d 'Fail at once (exit 75) instead of waiting'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -s o -l close -d 'Do not let COMMAND inherit the lock\'s connection'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lock" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand unlock" -l id -d 'The lock: a persistent lock (needed when the resource has several), or the lock of a running `dlmctl lock` command (root only)' -r
complete -c dlmctl -n "__fish_dlmctl_using_subcommand unlock" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand unlock" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand unlock" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand join" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand join" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand join" -s h -l help -d 'Print help'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand leave" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand leave" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand leave" -s h -l help -d 'Print help'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and not __fish_seen_subcommand_from get set help" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and not __fish_seen_subcommand_from get set help" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and not __fish_seen_subcommand_from get set help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and not __fish_seen_subcommand_from get set help" -f -a "get" -d 'Print a value block (bytes up to the first NUL, then a newline)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and not __fish_seen_subcommand_from get set help" -f -a "set" -d 'Write a value block (zero-padded to 64 bytes)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and not __fish_seen_subcommand_from get set help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from get" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from get" -l hex -d '128 lower-case hex digits'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from get" -l raw -d 'All 64 bytes, as they are'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from get" -l json -d 'JSON (keys in docs/JSON.md)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from get" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from get" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from set" -l file -d 'Take the value from a file' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from set" -l hex -d 'Take the value as hex digits' -r
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from set" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from set" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from set" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from help" -f -a "get" -d 'Print a value block (bytes up to the first NUL, then a newline)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from help" -f -a "set" -d 'Write a value block (zero-padded to 64 bytes)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand lvb; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand domains" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand domains" -l json -d 'JSON output (keys in docs/JSON.md)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand domains" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand domains" -s h -l help -d 'Print help'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand locks" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand locks" -l json -d 'JSON output (keys in docs/JSON.md)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand locks" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand locks" -s h -l help -d 'Print help'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand status" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c dlmctl -n "__fish_dlmctl_using_subcommand status" -l json -d 'JSON output (keys in docs/JSON.md)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand status" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand status" -s h -l help -d 'Print help'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "lock" -d 'Take a lock: run COMMAND under it, or keep it as a persistent lock and print its id'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "unlock" -d 'Release a persistent lock, or break a command\'s lock (root)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "join" -d 'Join a domain (the node stays in it until `dlmctl leave`)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "leave" -d 'Leave a domain, releasing every lock and value block in it'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "lvb" -d 'Read or write a lock value block'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "domains" -d 'List the domains this node is in'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "locks" -d 'List resources and their locks'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "status" -d 'Show lockd\'s status'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and not __fish_seen_subcommand_from lock unlock join leave lvb domains locks status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and __fish_seen_subcommand_from lvb" -f -a "get" -d 'Print a value block (bytes up to the first NUL, then a newline)'
complete -c dlmctl -n "__fish_dlmctl_using_subcommand help; and __fish_seen_subcommand_from lvb" -f -a "set" -d 'Write a value block (zero-padded to 64 bytes)'
