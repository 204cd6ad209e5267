// The trivia demo's question bank. Round n asks QUESTIONS[(n - 1) % QUESTIONS.length].
// The host's page keeps the answers to itself until it reveals them; the bank is public
// (this is a demo, not an exam). Imported by demo.js and by the e2e test.
export const QUESTIONS = [
  { text: "Which planet is known as the Red Planet?", choices: ["Venus", "Mars", "Jupiter", "Mercury"], answer: 1 },
  { text: "How many sides does a hexagon have?", choices: ["5", "6", "7", "8"], answer: 1 },
  { text: "What is the chemical symbol for gold?", choices: ["Ag", "Gd", "Au", "Go"], answer: 2 },
  { text: "Which ocean is the largest?", choices: ["Atlantic", "Indian", "Arctic", "Pacific"], answer: 3 },
  { text: "In computing, what does the \"S\" in HTTPS stand for?", choices: ["Secure", "Simple", "Server", "Socket"], answer: 0 },
  { text: "Which animal is the largest mammal?", choices: ["Elephant", "Blue whale", "Giraffe", "Orca"], answer: 1 },
  { text: "What is 12 × 12?", choices: ["124", "142", "144", "154"], answer: 2 },
  { text: "Which composer wrote the \"Moonlight\" Sonata?", choices: ["Mozart", "Bach", "Chopin", "Beethoven"], answer: 3 },
];

export const LETTERS = ["A", "B", "C", "D"];

export function questionFor(round) {
  return QUESTIONS[(round - 1) % QUESTIONS.length];
}
