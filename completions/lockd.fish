complete -c lockd -l socket -d 'The Unix socket to serve' -r -F
complete -c lockd -l settings -d 'lockd\'s TOML settings file' -r -F
complete -c lockd -l node-number -d 'This node\'s number (0-254) when running without a cluster' -r
complete -c lockd -l config -l config-file -d 'Run a node of the cluster in this cluster.conf' -r -F
complete -c lockd -l cluster -d 'Which cluster of the file (needed when it has several)' -r
complete -c lockd -l node -d 'This node\'s name in the file (default: the host name, matched as o2cb does)' -r
complete -c lockd -l autostarted -d 'Started on demand by a tool (shown in dlmctl status)'
complete -c lockd -s h -l help -d 'Print help (see more with \'--help\')'
complete -c lockd -s V -l version -d 'Print version'
