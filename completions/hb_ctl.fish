# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_hb_ctl_global_optspecs
    string join \n socket= no-autostart help S K I P d= u= n= h V/version
end

function __fish_hb_ctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_hb_ctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_hb_ctl_using_subcommand
    set -l cmd (__fish_hb_ctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s d -d 'The device' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s u -d 'The region\'s UUID' -r
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s n -d 'I/O priority, 0-7' -r
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -l help -d 'Print help'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s S -d 'Start heartbeating (one more reference for SERVICE)'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s K -d 'Stop heartbeating (one reference less for SERVICE)'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s I -d 'Print the region\'s references'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s P -d 'Set the heartbeat thread\'s I/O priority (not supported)'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s h -d 'Print the ocfs2_hb_ctl usage'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -s V -l version -d 'Print version'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -a "format" -d 'Format a device or file as a raw heartbeat region and print its UUID'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -a "start" -d 'Start heartbeating on a region; returns once the region is steady'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -a "stop" -d 'Stop heartbeating on a region (a clean stop: peers see this node leave at once)'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -a "status" -d 'Show the regions lockd heartbeats on'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -a "dump" -d 'Show the slots of a region, read straight from disk'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -a "info" -d 'Show where a region\'s slots are'
complete -c hb_ctl -n "__fish_hb_ctl_needs_command" -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand format" -l uuid -d 'The region\'s UUID (32 hex digits, dashes allowed) [default: random]' -r
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand format" -l block-size -d 'Slot size in bytes: 512, 1024, 2048 or 4096' -r
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand format" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand format" -l force -d 'Overwrite an OCFS2 volume or an existing region'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand format" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand format" -l help -d 'Print help'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand start" -l uuid -d 'The region\'s UUID (found by scanning block devices)' -r
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand start" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand start" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand start" -l help -d 'Print help'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand stop" -l uuid -d 'The region\'s UUID (found by scanning block devices)' -r
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand stop" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand stop" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand stop" -l help -d 'Print help'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand status" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand status" -l json -d 'JSON output (keys in docs/JSON.md)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand status" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand status" -l help -d 'Print help'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand dump" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand dump" -l all -d 'Also slots never written (seq 0)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand dump" -l json -d 'JSON output (keys in docs/JSON.md)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand dump" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand dump" -l help -d 'Print help'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand info" -l socket -d 'lockd\'s socket [default: $LOCKD_SOCKET, /run/o2tools/lockd.sock, or a private one]' -r -F
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand info" -l json -d 'JSON output (keys in docs/JSON.md)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand info" -l no-autostart -d 'Never start a lockd on demand (also LOCKD_NO_AUTOSTART=1)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand info" -l help -d 'Print help'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand help; and not __fish_seen_subcommand_from format start stop status dump info help" -f -a "format" -d 'Format a device or file as a raw heartbeat region and print its UUID'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand help; and not __fish_seen_subcommand_from format start stop status dump info help" -f -a "start" -d 'Start heartbeating on a region; returns once the region is steady'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand help; and not __fish_seen_subcommand_from format start stop status dump info help" -f -a "stop" -d 'Stop heartbeating on a region (a clean stop: peers see this node leave at once)'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand help; and not __fish_seen_subcommand_from format start stop status dump info help" -f -a "status" -d 'Show the regions lockd heartbeats on'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand help; and not __fish_seen_subcommand_from format start stop status dump info help" -f -a "dump" -d 'Show the slots of a region, read straight from disk'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand help; and not __fish_seen_subcommand_from format start stop status dump info help" -f -a "info" -d 'Show where a region\'s slots are'
complete -c hb_ctl -n "__fish_hb_ctl_using_subcommand help; and not __fish_seen_subcommand_from format start stop status dump info help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
