# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_o2cb_global_optspecs
    string join \n config-file= v/verbose h/help V/version
end

function __fish_o2cb_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_o2cb_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_o2cb_using_subcommand
    set -l cmd (__fish_o2cb_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c o2cb -n "__fish_o2cb_needs_command" -l config-file -d 'The cluster configuration file [default: $O2CB_CONFIG_FILE, else /etc/ocfs2/cluster.conf]' -r -F
complete -c o2cb -n "__fish_o2cb_needs_command" -s v -l verbose -d 'Print what is done on stderr; repeat for debugging detail'
complete -c o2cb -n "__fish_o2cb_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c o2cb -n "__fish_o2cb_needs_command" -s V -l version -d 'Print version'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "add-cluster" -d 'Add cluster to the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "remove-cluster" -d 'Removes cluster from the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "add-node" -d 'Adds a node to the cluster in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "remove-node" -d 'Removes a node from the cluster in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "add-heartbeat" -d 'Adds a heartbeat region to the cluster in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "remove-heartbeat" -d 'Removes a heartbeat region from the cluster in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "heartbeat-mode" -d 'Toggles the heartbeat mode between global and local.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "list-clusters" -d 'Lists all the cluster names in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "list-cluster" -d 'Lists all the nodes and heartbeat regions associated with the cluster in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "list-nodes" -d 'Lists all the nodes associated with the cluster in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "list-heartbeats" -d 'Lists all the heartbeat regions associated with the cluster in the config file.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "register-cluster" -d 'Registers the cluster with the cluster stack (lockd).'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "unregister-cluster" -d 'Unregisters the cluster from the cluster stack (lockd).'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "start-heartbeat" -d 'Starts global heartbeat.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "stop-heartbeat" -d 'Stops global heartbeat.'
complete -c o2cb -n "__fish_o2cb_needs_command" -f -a "cluster-status" -d 'Returns 0 if cluster online, 1 otherwise.'
complete -c o2cb -n "__fish_o2cb_using_subcommand add-cluster" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand remove-cluster" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand add-node" -l ip -d 'IPv4 address [default: the first IPv4 address the node name resolves to]' -r
complete -c o2cb -n "__fish_o2cb_using_subcommand add-node" -l port -d 'Port [default: 7777]' -r
complete -c o2cb -n "__fish_o2cb_using_subcommand add-node" -l number -d 'Node number, 0-254 [default: the lowest free number]' -r
complete -c o2cb -n "__fish_o2cb_using_subcommand add-node" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand remove-node" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand add-heartbeat" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand remove-heartbeat" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand heartbeat-mode" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-clusters" -l json -d 'JSON (ours; keys in docs/JSON.md)'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-clusters" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-cluster" -l oneline -d 'One line per object'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-cluster" -l json -d 'JSON (ours; keys in docs/JSON.md)'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-cluster" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-nodes" -l oneline -d 'One line per object'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-nodes" -l json -d 'JSON (ours; keys in docs/JSON.md)'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-nodes" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-heartbeats" -l oneline -d 'One line per object'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-heartbeats" -l json -d 'JSON (ours; keys in docs/JSON.md)'
complete -c o2cb -n "__fish_o2cb_using_subcommand list-heartbeats" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand register-cluster" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand unregister-cluster" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand start-heartbeat" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand stop-heartbeat" -s h -l help -d 'Print help'
complete -c o2cb -n "__fish_o2cb_using_subcommand cluster-status" -s h -l help -d 'Print help'
