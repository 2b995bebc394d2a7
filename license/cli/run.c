/*
 * run.c - the part of main() both license tools share: pick the command
 * argv[1] names, print help, turn everything into an exit status.
 */
#include "cli.h"

#include <string.h>

const char *cli_tool = "lm-license";

static void usage(FILE *f, const char *about, const cli_command *commands, size_t n)
{
    fprintf(f, "usage: %s COMMAND [OPTIONS]   (%s COMMAND --help for details)\n%s\n\n", cli_tool,
            cli_tool, about);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "  %-15s %s\n", commands[i].name, commands[i].summary);
}

int cli_run(const char *tool, const char *about, const cli_command *commands, size_t n,
            int argc, char **argv)
{
    cli_tool = tool;
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout, about, commands, n);
        return argc < 2 ? CLI_USAGE : CLI_OK;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(argv[1], commands[i].name))
            continue;
        int st = commands[i].run(argc - 1, argv + 1);
        if (st < 0) {
            fputs(commands[i].help, stdout);
            return CLI_OK;
        }
        return st;
    }
    fprintf(stderr, "%s: unknown command '%s'\n", cli_tool, argv[1]);
    usage(stderr, about, commands, n);
    return CLI_USAGE;
}
