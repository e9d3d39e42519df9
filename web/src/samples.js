// Starter programs: each asks for a name, so that typing into the running program
// shows what the playground does. Prompts are flushed, since stdout is a pipe.
export const SAMPLES = {
  python: `import time

name = input("What's your name? ")
print(f"Hello, {name}!")
for i in range(3, 0, -1):
    print(f"{i}...")
    time.sleep(0.4)
print("Liftoff!")
`,
  javascript: `const readline = require("node:readline");

const rl = readline.createInterface({ input: process.stdin });
process.stdout.write("What's your name? ");
rl.once("line", (name) => {
  console.log(\`Hello, \${name}!\`);
  rl.close();
});
`,
  typescript: `import * as readline from "node:readline";

const rl = readline.createInterface({ input: process.stdin });
process.stdout.write("What's your name? ");
rl.once("line", (name: string) => {
  const greeting: string = \`Hello, \${name}!\`;
  console.log(greeting);
  rl.close();
});
`,
  java: `import java.util.Scanner;

public class Main {
    public static void main(String[] args) {
        Scanner in = new Scanner(System.in);
        System.out.print("What's your name? ");
        System.out.flush();
        String name = in.nextLine();
        System.out.println("Hello, " + name + "!");
    }
}
`,
  go: `package main

import (
	"bufio"
	"fmt"
	"os"
)

func main() {
	fmt.Print("What's your name? ")
	in := bufio.NewScanner(os.Stdin)
	in.Scan()
	fmt.Printf("Hello, %s!\\n", in.Text())
}
`,
  c: `#include <stdio.h>
#include <string.h>

int main(void) {
    char name[256] = "";
    printf("What's your name? ");
    fflush(stdout);
    if (fgets(name, sizeof name, stdin)) name[strcspn(name, "\\n")] = 0;
    printf("Hello, %s!\\n", name);
    return 0;
}
`,
  cpp: `#include <iostream>
#include <string>

int main() {
    std::string name;
    std::cout << "What's your name? " << std::flush;
    std::getline(std::cin, name);
    std::cout << "Hello, " << name << "!" << std::endl;
}
`,
  rust: `use std::io::{self, BufRead, Write};

fn main() {
    print!("What's your name? ");
    io::stdout().flush().unwrap();
    let mut name = String::new();
    io::stdin().lock().read_line(&mut name).unwrap();
    println!("Hello, {}!", name.trim_end());
}
`,
  ruby: `$stdout.sync = true
print "What's your name? "
name = gets.to_s.chomp
puts "Hello, #{name}!"
`,
  php: `<?php
echo "What's your name? ";
$name = rtrim((string) fgets(STDIN), "\\n");
echo "Hello, $name!\\n";
`,
  bash: `echo -n "What's your name? "
read -r name
echo "Hello, $name!"
`,
};

